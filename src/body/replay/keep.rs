//! What keeping one chunk for replay holds, and when to copy it instead.
//!
//! A chunk is a `Bytes`: keeping it is a reference-count increment, but it
//! keeps its whole buffer alive. tonic encodes each unary message into the
//! front of a fresh 8 KiB buffer, so keeping a 100-byte request by reference
//! would hold 8 KiB, and a 16 MiB channel cap would be full at about 2,000
//! such calls in flight, after which calls lose their retries exactly when
//! load is high. So a chunk much smaller than the buffer it pins is copied
//! (`retry-semantics.md` section 5); a large one, or one whose buffer it
//! mostly fills, is kept by reference. Either way the layer-wide cap is
//! charged what keeping really holds.

use bytes::Bytes;

/// What a kept copy costs beyond its bytes: the allocator's header and
/// rounding, and the reference count `Bytes` adds when the copy is first
/// shared (on a retry). Charged so that the cap counts real memory even for
/// the smallest requests.
pub(super) const COPY_OVERHEAD: usize = 48;

/// One chunk read from the caller's body: what the attempt that read it
/// sends, and what the replay keeps for later attempts.
pub(super) struct Kept {
    /// The chunk as the caller's body produced it.
    pub(super) sent: Bytes,
    /// The same bytes, for later attempts: a copy or another reference.
    pub(super) kept: Bytes,
    /// What keeping `kept` holds, charged to the layer-wide cap.
    pub(super) charged: usize,
}

/// Keeps `chunk` for later attempts.
///
/// * Nothing else refers to it and its buffer is at least twice its size:
///   the bytes are copied, and the copy is charged.
/// * Nothing else refers to it and it fills at least half its buffer: it is
///   kept by reference, charged its buffer's size.
/// * Something else still refers to it (a static chunk, or a slice of a
///   buffer the caller goes on writing): its buffer's size cannot be asked,
///   and the caller holds it anyway; kept by reference, charged its length.
pub(super) fn keep(chunk: Bytes) -> Kept {
    match chunk.try_into_mut() {
        Ok(unique) => {
            let len = unique.len();
            let buffer = unique.capacity().max(len);
            let sent = unique.freeze();
            if buffer / 2 >= len {
                Kept {
                    kept: Bytes::copy_from_slice(&sent),
                    sent,
                    charged: copy_charge(len),
                }
            } else {
                Kept {
                    kept: sent.clone(),
                    sent,
                    charged: buffer,
                }
            }
        }
        Err(shared) => Kept {
            kept: shared.clone(),
            charged: shared.len(),
            sent: shared,
        },
    }
}

/// What a copy of `len` bytes is charged: nothing for an empty one (no
/// allocation), else its length plus the allocation's overhead.
fn copy_charge(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.saturating_add(COPY_OVERHEAD)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A chunk carved from the front of a larger buffer, as tonic's encoder
    /// makes them, and now the buffer's only view.
    pub(crate) fn carved(len: usize, buffer: usize) -> Bytes {
        let mut buf = bytes::BytesMut::with_capacity(buffer);
        buf.extend(std::iter::repeat_n(7u8, len));
        buf.split().freeze()
    }

    #[test]
    fn a_small_chunk_in_a_big_buffer_is_copied_and_charged_its_length() {
        let chunk = carved(100, 8 * 1024);
        let original = chunk.as_ptr();
        let kept = keep(chunk);
        assert_eq!(
            kept.sent.as_ptr(),
            original,
            "the attempt sends the original"
        );
        assert_ne!(kept.kept.as_ptr(), original, "the replay keeps a copy");
        assert_eq!(kept.kept, kept.sent);
        assert_eq!(kept.charged, 100 + COPY_OVERHEAD);
    }

    #[test]
    fn a_chunk_filling_its_buffer_is_kept_by_reference_and_charged_the_buffer() {
        for (len, buffer) in [(5000, 8 * 1024), (100, 100), (64 * 1024, 100 * 1024)] {
            let chunk = carved(len, buffer);
            let original = chunk.as_ptr();
            let kept = keep(chunk);
            assert_eq!(kept.kept.as_ptr(), original, "{len} in {buffer}: no copy");
            assert_eq!(kept.sent.as_ptr(), original);
            assert!(kept.charged >= len && kept.charged >= buffer.min(len));
            assert_eq!(kept.charged, buffer.max(len));
        }
    }

    #[test]
    fn a_shared_or_static_chunk_is_kept_by_reference_and_charged_its_length() {
        let chunk = carved(10, 8 * 1024);
        let other = chunk.clone();
        let kept = keep(chunk);
        assert_eq!(kept.kept.as_ptr(), other.as_ptr());
        assert_eq!(kept.charged, 10);
        let kept = keep(Bytes::from_static(b"static"));
        assert_eq!(kept.charged, 6);
        assert_eq!(kept.kept, "static");
    }

    #[test]
    fn an_empty_chunk_costs_nothing() {
        assert_eq!(keep(Bytes::new()).charged, 0);
        assert_eq!(keep(carved(0, 8 * 1024)).charged, 0);
    }
}
