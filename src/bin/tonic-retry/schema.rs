//! Message schemas known only at run time: `.proto` files compiled with
//! protox, or the server's reflection service (`grpc.reflection.v1`,
//! falling back to `v1alpha`), and JSON ⇄ protobuf with prost-reflect.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost_reflect::prost_types::FileDescriptorProto;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::Failure;
use crate::args::{MethodName, SchemaArgs};

/// A descriptor pool and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Schema {
    pub(crate) pool: DescriptorPool,
    /// "--proto a.proto" or "reflection (grpc.reflection.v1)", for messages.
    pub(crate) source: String,
}

impl Schema {
    /// The descriptor of `method`; unknown methods and streaming methods
    /// (the tool makes unary calls only) are errors.
    pub(crate) fn unary_method(&self, name: &MethodName) -> Result<MethodDescriptor, Failure> {
        let service = self.pool.get_service_by_name(name.service).ok_or_else(|| {
            Failure::input(format!(
                "unknown method {}: {} has no service {}",
                &name.path.as_str()[1..],
                self.source,
                name.service
            ))
        })?;
        let method = service
            .methods()
            .find(|m| m.name() == name.method)
            .ok_or_else(|| {
                let known: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
                Failure::input(format!(
                    "unknown method {}: service {} has no method {} (it has {})",
                    &name.path.as_str()[1..],
                    name.service,
                    name.method,
                    known.join(", ")
                ))
            })?;
        if method.is_client_streaming() || method.is_server_streaming() {
            return Err(Failure::input(format!(
                "{} is a streaming method; this tool makes unary calls only",
                &name.path.as_str()[1..]
            )));
        }
        Ok(method)
    }
}

/// Compiles the `--proto` files (and their imports) with protox.
pub(crate) fn compile(args: &SchemaArgs) -> Result<Schema, Failure> {
    let includes: Vec<PathBuf> = if args.import_paths.is_empty() {
        // Each file's own directory, so that `--proto dir/api.proto` works
        // without -I.
        let mut dirs = BTreeSet::new();
        for file in &args.protos {
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
            dirs.insert(dir.unwrap_or(Path::new(".")).to_path_buf());
        }
        dirs.into_iter().collect()
    } else {
        args.import_paths.clone()
    };
    let named: Vec<String> = args
        .protos
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let bad = |e: protox::Error| Failure::input(format!("--proto {}: {e}", named.join(" ")));
    let mut compiler = protox::Compiler::new(&includes).map_err(bad)?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(&args.protos).map_err(bad)?;
    Ok(Schema {
        pool: compiler.descriptor_pool(),
        source: format!("--proto {}", named.join(" ")),
    })
}

/// JSON text to the protobuf encoding of a `desc` message; unknown fields
/// and wrong types are errors.
pub(crate) fn encode_json(
    desc: &MessageDescriptor,
    source: &str,
    text: &str,
) -> Result<Bytes, Failure> {
    let bad = |e: serde_json::Error| {
        Failure::input(format!(
            "{source}: not a valid {} in JSON: {e}",
            desc.full_name()
        ))
    };
    let mut json = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(desc.clone(), &mut json).map_err(bad)?;
    json.end().map_err(bad)?;
    Ok(message.encode_to_vec().into())
}

/// A response message as JSON (proto3 JSON mapping, default values left
/// out, as grpcurl prints them).
pub(crate) fn decode_json(
    desc: &MessageDescriptor,
    bytes: &[u8],
) -> Result<serde_json::Value, String> {
    let message = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| format!("not a valid {}: {e}", desc.full_name()))?;
    serde_json::to_value(&message).map_err(|e| format!("{}: {e}", desc.full_name()))
}

// ---------------------------------------------------------------------------
// Reflection.

/// What is asked of the reflection service.
enum Query {
    /// The file that defines a symbol, with its dependencies.
    Symbol(String),
    /// A file by name.
    File(String),
    /// The services the server has.
    Services,
}

/// What it answered.
enum Answer {
    Files(Vec<Vec<u8>>),
    Services(Vec<String>),
    Error(i32, String),
}

/// One query on a reflection service of one version: `v1` or `v1alpha`,
/// whose generated types are alike but distinct.
macro_rules! reflection_query {
    ($name:ident, $version:ident) => {
        async fn $name(channel: Channel, query: &Query) -> Result<Answer, Status> {
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version as pb;

            let message_request = match query {
                Query::Symbol(s) => MessageRequest::FileContainingSymbol(s.clone()),
                Query::File(f) => MessageRequest::FileByFilename(f.clone()),
                Query::Services => MessageRequest::ListServices(String::new()),
            };
            let request = pb::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message_request),
            };
            let mut client = pb::server_reflection_client::ServerReflectionClient::new(channel);
            let mut answers = client
                .server_reflection_info(futures_util::stream::iter([request]))
                .await?
                .into_inner();
            let answer = answers
                .message()
                .await?
                .ok_or_else(|| Status::unknown("the reflection stream ended without an answer"))?;
            match answer.message_response {
                Some(MessageResponse::FileDescriptorResponse(r)) => {
                    Ok(Answer::Files(r.file_descriptor_proto))
                }
                Some(MessageResponse::ListServicesResponse(r)) => Ok(Answer::Services(
                    r.service.into_iter().map(|s| s.name).collect(),
                )),
                Some(MessageResponse::ErrorResponse(e)) => {
                    Ok(Answer::Error(e.error_code, e.error_message))
                }
                _ => Err(Status::unknown("an answer of the wrong kind")),
            }
        }
    };
}

reflection_query!(query_v1, v1);
reflection_query!(query_v1alpha, v1alpha);

/// Which reflection service the server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V1Alpha,
}

impl Version {
    fn name(self) -> &'static str {
        match self {
            Version::V1 => "grpc.reflection.v1",
            Version::V1Alpha => "grpc.reflection.v1alpha",
        }
    }
}

/// A client of the server's reflection service.
pub(crate) struct Reflection {
    channel: Channel,
    /// Found on the first query.
    version: Option<Version>,
}

impl Reflection {
    pub(crate) fn new(channel: Channel) -> Reflection {
        Reflection {
            channel,
            version: None,
        }
    }

    async fn ask(&mut self, query: &Query) -> Result<Answer, Failure> {
        let failed = |status: Status| {
            Failure::input(format!(
                "reflection: {}: {}",
                tonic_retry::code_name(status.code()),
                status.message()
            ))
        };
        // Some servers (tonic-reflection among them) answer an unknown
        // symbol or file with a NOT_FOUND status instead of an
        // ErrorResponse: the same answer.
        let answered = |result: Result<Answer, Status>| match result {
            Err(status) if status.code() == Code::NotFound => Ok(Answer::Error(
                Code::NotFound as i32,
                status.message().to_owned(),
            )),
            other => other,
        };
        match self.version {
            Some(Version::V1) => {
                return answered(query_v1(self.channel.clone(), query).await).map_err(failed);
            }
            Some(Version::V1Alpha) => {
                return answered(query_v1alpha(self.channel.clone(), query).await).map_err(failed);
            }
            None => {}
        }
        match answered(query_v1(self.channel.clone(), query).await) {
            Ok(answer) => {
                self.version = Some(Version::V1);
                return Ok(answer);
            }
            Err(status) if status.code() == Code::Unimplemented => {}
            Err(status) => return Err(failed(status)),
        }
        match answered(query_v1alpha(self.channel.clone(), query).await) {
            Ok(answer) => {
                self.version = Some(Version::V1Alpha);
                Ok(answer)
            }
            Err(status) if status.code() == Code::Unimplemented => Err(Failure::input(
                "the server has no reflection service (grpc.reflection.v1 or v1alpha): give --proto FILE",
            )),
            Err(status) => Err(failed(status)),
        }
    }

    fn source(&self) -> String {
        format!(
            "reflection ({})",
            self.version.map_or("grpc.reflection", Version::name)
        )
    }

    /// The services the server lists.
    pub(crate) async fn services(&mut self) -> Result<Vec<String>, Failure> {
        match self.ask(&Query::Services).await? {
            Answer::Services(mut names) => {
                names.sort();
                Ok(names)
            }
            Answer::Error(code, message) => Err(reflection_error(code, &message, "list services")),
            Answer::Files(_) => Err(Failure::input("reflection: an answer of the wrong kind")),
        }
    }

    /// The schema of the file defining each symbol, with every file it
    /// imports, asked for one by one until none is missing.
    pub(crate) async fn schema_for(&mut self, symbols: &[&str]) -> Result<Schema, Failure> {
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut wanted: Vec<(String, String)> = Vec::new();
        for symbol in symbols {
            let answer = self.ask(&Query::Symbol((*symbol).to_owned())).await?;
            let received = match answer {
                Answer::Files(received) => received,
                Answer::Error(code, message) if code == Code::NotFound as i32 => {
                    return Err(Failure::input(format!(
                        "{}: the server does not know the symbol {symbol} ({message})",
                        self.source()
                    )));
                }
                Answer::Error(code, message) => {
                    return Err(reflection_error(code, &message, symbol));
                }
                Answer::Services(_) => {
                    return Err(Failure::input("reflection: an answer of the wrong kind"));
                }
            };
            add_files(&mut files, &mut wanted, received)?;
        }
        while let Some((name, importer)) = wanted.pop() {
            if files.contains_key(&name) {
                continue;
            }
            let received = match self.ask(&Query::File(name.clone())).await? {
                Answer::Files(received) => received,
                Answer::Error(code, message) => {
                    return Err(Failure::input(format!(
                        "{}: the server cannot send {name} (imported by {importer}): {}: {message}",
                        self.source(),
                        code_text(code)
                    )));
                }
                Answer::Services(_) => {
                    return Err(Failure::input("reflection: an answer of the wrong kind"));
                }
            };
            add_files(&mut files, &mut wanted, received)?;
            if !files.contains_key(&name) {
                return Err(Failure::input(format!(
                    "{}: asked for {name} (imported by {importer}), the server sent other files",
                    self.source()
                )));
            }
        }
        // A FileDescriptorSet is field 1 repeated: each file length-prefixed.
        // Encoded by hand from the bytes the server sent, rather than
        // through prost_types' structs, so that options and extensions the
        // structs do not model survive (prost-reflect keeps them when it
        // decodes a set itself).
        let mut set = BytesMut::new();
        for bytes in files.values() {
            set.put_u8(0x0a);
            prost::encoding::encode_varint(bytes.len() as u64, &mut set);
            set.put_slice(bytes);
        }
        let mut pool = DescriptorPool::new();
        pool.decode_file_descriptor_set(set.freeze()).map_err(|e| {
            Failure::input(format!(
                "{}: the server's descriptors are incomplete: {e}",
                self.source()
            ))
        })?;
        Ok(Schema {
            pool,
            source: self.source(),
        })
    }
}

/// Records each received file and the imports not seen yet.
fn add_files(
    files: &mut BTreeMap<String, Vec<u8>>,
    wanted: &mut Vec<(String, String)>,
    received: Vec<Vec<u8>>,
) -> Result<(), Failure> {
    for bytes in received {
        let file = FileDescriptorProto::decode(bytes.as_slice()).map_err(|e| {
            Failure::input(format!(
                "reflection: a file descriptor that does not decode: {e}"
            ))
        })?;
        let name = file.name.clone().unwrap_or_default();
        for dependency in &file.dependency {
            if !files.contains_key(dependency) {
                wanted.push((dependency.clone(), name.clone()));
            }
        }
        files.insert(name, bytes);
    }
    Ok(())
}

fn reflection_error(code: i32, message: &str, what: &str) -> Failure {
    Failure::input(format!(
        "reflection: {what}: {}: {message}",
        code_text(code)
    ))
}

/// A status code number as its name (the number when it is none).
fn code_text(code: i32) -> String {
    let named = Code::from_i32(code);
    if named as i32 == code {
        tonic_retry::code_name(named).to_owned()
    } else {
        code.to_string()
    }
}

/// The schema a command needs: from `--proto` when given, else from the
/// server's reflection service, for `symbols`.
pub(crate) async fn load(
    args: &SchemaArgs,
    channel: &Channel,
    symbols: &[&str],
) -> Result<Schema, Failure> {
    if args.protos.is_empty() {
        Reflection::new(channel.clone()).schema_for(symbols).await
    } else {
        compile(args)
    }
}
