//! `tonic-retry list` and `describe`, as in grpcurl.
//!
//! The proto text is printed here: prost-reflect has no printer, and the
//! crates that do (protobuf-parse and the like) would bring a second
//! protobuf stack for what `describe` shows: names, fields and signatures.

use std::fmt::Write as _;
use std::io::Write as _;

use clap::Args;
use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor, ServiceDescriptor};

use crate::Failure;
use crate::args::{SchemaArgs, TlsArgs};
use crate::connect;
use crate::schema::{self, Reflection, Schema};

/// List the services of a server, or the methods of one service.
///
/// Asks the server's reflection service, or reads --proto files instead
/// (then TARGET may be left out: `tonic-retry list --proto api.proto`).
#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// The server (as for probe), then optionally a service to list the
    /// methods of.
    #[arg(value_name = "TARGET [SERVICE]", num_args = 0..=2)]
    args: Vec<String>,
    #[command(flatten)]
    schema: SchemaArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Describe a service, method, message or enum as proto text.
///
/// Asks the server's reflection service, or reads --proto files instead
/// (then TARGET may be left out).
#[derive(Args, Debug)]
pub(crate) struct DescribeArgs {
    /// The server (as for probe), then the fully-qualified symbol:
    /// pkg.Service, pkg.Service.Method (or pkg.Service/Method), pkg.Message.
    #[arg(value_name = "TARGET SYMBOL", num_args = 1..=2, required = true)]
    args: Vec<String>,
    #[command(flatten)]
    schema: SchemaArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Splits `[TARGET] [SYMBOL]`: with --proto a lone argument is the symbol
/// unless it looks like an address (has a ':').
fn split(args: &[String], schema: &SchemaArgs) -> (Option<String>, Option<String>) {
    match args {
        [] => (None, None),
        [one] if !schema.protos.is_empty() && !one.contains(':') => (None, Some(one.clone())),
        [one] => (Some(one.clone()), None),
        [target, symbol, ..] => (Some(target.clone()), Some(symbol.clone())),
    }
}

/// The schema from --proto, or a reflection client for `target`.
async fn source(
    target: Option<String>,
    schema_args: &SchemaArgs,
    tls: &TlsArgs,
) -> Result<Result<Schema, Reflection>, Failure> {
    if !schema_args.protos.is_empty() {
        return schema::compile(schema_args).map(Ok);
    }
    let target =
        target.ok_or_else(|| Failure::input("missing the target: give TARGET or --proto"))?;
    let target = connect::target(&target, tls)?;
    let channel = connect::channel(&target).await?;
    Ok(Err(Reflection::new(channel)))
}

fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

pub(crate) async fn list(args: ListArgs) -> Result<(), Failure> {
    let (target, service) = split(&args.args, &args.schema);
    let source = source(target, &args.schema, &args.tls).await?;
    let mut out = String::new();
    match (source, service) {
        (Ok(schema), None) => {
            let mut names: Vec<String> = schema
                .pool
                .services()
                .map(|s| s.full_name().to_owned())
                .collect();
            names.sort();
            for name in names {
                let _ = writeln!(out, "{name}");
            }
        }
        (Err(mut reflection), None) => {
            for name in reflection.services().await? {
                let _ = writeln!(out, "{name}");
            }
        }
        (source, Some(service)) => {
            let schema = match source {
                Ok(schema) => schema,
                Err(mut reflection) => reflection.schema_for(&[&service]).await?,
            };
            let desc = schema.pool.get_service_by_name(&service).ok_or_else(|| {
                Failure::input(format!("{}: no service {service}", schema.source))
            })?;
            for method in desc.methods() {
                let _ = writeln!(out, "{}", method.full_name());
            }
        }
    }
    print(&out)
}

pub(crate) async fn describe(args: DescribeArgs) -> Result<(), Failure> {
    let (target, symbol) = split(&args.args, &args.schema);
    let symbol = symbol.ok_or_else(|| Failure::input("missing the symbol to describe"))?;
    // pkg.Service/Method is the method pkg.Service.Method.
    let symbol = symbol.trim_start_matches('/').replace('/', ".");
    let schema = match source(target, &args.schema, &args.tls).await? {
        Ok(schema) => schema,
        Err(mut reflection) => reflection.schema_for(&[&symbol]).await?,
    };
    let pool = &schema.pool;
    let text = if let Some(service) = pool.get_service_by_name(&symbol) {
        format!("{symbol} is a service:\n{}", service_text(&service))
    } else if let Some(message) = pool.get_message_by_name(&symbol) {
        format!("{symbol} is a message:\n{}", message_text(&message))
    } else if let Some(e) = pool.get_enum_by_name(&symbol) {
        let mut text = format!("{symbol} is an enum:\nenum {} {{\n", e.name());
        for value in e.values() {
            let _ = writeln!(text, "  {} = {};", value.name(), value.number());
        }
        text + "}\n"
    } else if let Some((service, method)) = symbol.rsplit_once('.')
        && let Some(service) = pool.get_service_by_name(service)
        && let Some(method) = service.methods().find(|m| m.name() == method)
    {
        format!("{symbol} is a method:\n{}\n", method_text(&method))
    } else {
        return Err(Failure::input(format!(
            "{}: no service, method, message or enum {symbol}",
            schema.source
        )));
    };
    print(&text)
}

fn service_text(service: &ServiceDescriptor) -> String {
    let mut text = format!("service {} {{\n", service.name());
    for method in service.methods() {
        let _ = writeln!(text, "  {}", method_text(&method));
    }
    text + "}\n"
}

fn method_text(method: &prost_reflect::MethodDescriptor) -> String {
    let stream = |yes: bool| if yes { "stream " } else { "" };
    format!(
        "rpc {}({}.{}) returns ({}.{});",
        method.name(),
        stream(method.is_client_streaming()),
        method.input().full_name(),
        stream(method.is_server_streaming()),
        method.output().full_name()
    )
}

fn message_text(message: &MessageDescriptor) -> String {
    let mut text = format!("message {} {{\n", message.name());
    for field in message.fields() {
        let _ = writeln!(
            text,
            "  {}{} {} = {};",
            label(&field),
            kind_name(&field),
            field.name(),
            field.number()
        );
    }
    text + "}\n"
}

fn label(field: &FieldDescriptor) -> &'static str {
    if field.is_map() {
        return "";
    }
    match field.cardinality() {
        Cardinality::Repeated => "repeated ",
        // proto3 `optional` (a synthetic one-field oneof).
        Cardinality::Optional if field.field_descriptor_proto().proto3_optional() => "optional ",
        _ => "",
    }
}

fn kind_name(field: &FieldDescriptor) -> String {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
        && let (Some(key), Some(value)) = (entry.get_field(1), entry.get_field(2))
    {
        return format!(
            "map<{}, {}>",
            kind_text(&key.kind()),
            kind_text(&value.kind())
        );
    }
    kind_text(&field.kind())
}

fn kind_text(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Sint32 => "sint32".into(),
        Kind::Sint64 => "sint64".into(),
        Kind::Fixed32 => "fixed32".into(),
        Kind::Fixed64 => "fixed64".into(),
        Kind::Sfixed32 => "sfixed32".into(),
        Kind::Sfixed64 => "sfixed64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(m) => format!(".{}", m.full_name()),
        Kind::Enum(e) => format!(".{}", e.full_name()),
    }
}
