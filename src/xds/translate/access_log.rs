//! Access logs (`FileAccessLog`, stdout/stderr loggers) -> `config::AccessLog`,
//! with the format parsed now so a bad operator is a config error.

use std::sync::Arc;

use super::Msg;
use crate::{config, telemetry::access_log::Format};

const FILE_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

pub fn access_logs(m: &mut Msg<'_, '_>) -> Vec<config::AccessLog> {
    let mut out = Vec::new();
    for mut al in m.list("access_log") {
        al.ignore("name");
        if al.has("filter") {
            al.field_error("filter", "access log filters are not supported yet");
            continue;
        }
        match al.any("typed_config") {
            Some((t, mut file)) if t == FILE_LOG => {
                let path = file.string("path");
                let format = log_format(&mut file);
                if path.is_empty() {
                    file.field_error("path", "must not be empty");
                }
                if let Some(format) = format {
                    out.push(config::AccessLog {
                        path,
                        format: Arc::new(format),
                    });
                }
            }
            Some((t, mut stream)) if t == STDOUT_LOG || t == STDERR_LOG => {
                let path = if t == STDOUT_LOG { "/dev/stdout" } else { "/dev/stderr" };
                if let Some(format) = log_format(&mut stream) {
                    out.push(config::AccessLog {
                        path: path.into(),
                        format: Arc::new(format),
                    });
                }
            }
            Some((t, inner)) => {
                inner.abandon();
                al.field_error("typed_config", format!("access logger {t} is not supported yet"));
            }
            None => al.error("access log needs a typed_config"),
        }
    }
    out
}

fn log_format(m: &mut Msg<'_, '_>) -> Option<Format> {
    // FileAccessLog still has the deprecated plain `format`; the stream loggers do not.
    let mut text = if m.knows("format") {
        m.string("format")
    } else {
        String::new()
    };
    if let Some(mut lf) = m.msg("log_format") {
        if let Some(mut src) = lf.msg("text_format_source") {
            text = src.string("inline_string");
        } else {
            text = lf.string("text_format");
        }
        lf.ignore("omit_empty_values");
        lf.ignore("content_type");
    }
    if text.is_empty() {
        return Some(Format::envoy_default());
    }
    match Format::parse(&text) {
        Ok(f) => Some(f),
        Err(e) => {
            m.field_error("log_format", e);
            None
        }
    }
}
