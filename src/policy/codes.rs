//! [`CodeSet`]: a set of gRPC status codes, as retry policies, hedging
//! policies and the circuit breaker name them.

use std::fmt;

use tonic::Code;

/// A set of gRPC status codes, stored as a bit set (one bit per code).
///
/// ```
/// use tonic::Code;
/// use tonic_retry::CodeSet;
///
/// let set: CodeSet = [Code::Unavailable, Code::Aborted].into_iter().collect();
/// assert!(set.contains(Code::Aborted));
/// assert!(!set.contains(Code::NotFound));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct CodeSet(u32);

impl CodeSet {
    /// The empty set.
    pub const EMPTY: CodeSet = CodeSet(0);

    /// This set with `code` added.
    pub const fn with(self, code: Code) -> CodeSet {
        CodeSet(self.0 | Self::bit(code))
    }

    /// Adds `code` to the set.
    pub fn insert(&mut self, code: Code) {
        self.0 |= Self::bit(code);
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: Code) -> bool {
        self.0 & Self::bit(code) != 0
    }

    /// Whether the set holds no code.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The codes in the set, in numeric order.
    pub fn iter(self) -> impl Iterator<Item = Code> {
        (0..=16)
            .map(Code::from_i32)
            .filter(move |c| self.contains(*c))
    }

    const fn bit(code: Code) -> u32 {
        // `Code` is a field-less enum over 0..=16, so the shift never overflows.
        1 << (code as u32)
    }
}

impl FromIterator<Code> for CodeSet {
    fn from_iter<I: IntoIterator<Item = Code>>(iter: I) -> Self {
        let mut set = CodeSet::EMPTY;
        for code in iter {
            set.insert(code);
        }
        set
    }
}

impl fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}
