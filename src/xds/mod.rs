//! Envoy's v3 API in, remora's `config` model out: static bootstrap files
//! (`remora run --config`, `remora check`) and the ADS client (`ads.rs`), both
//! through the same `translate`.

pub mod ads;
pub mod decode;
pub mod status;
pub mod translate;

use decode::ApiPool;
use translate::{ConfigError, Ctx, Errors, Msg};

use crate::config;

const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// Reads and translates a bootstrap file.
pub fn load_bootstrap(path: &std::path::Path) -> Result<config::Bootstrap, Errors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Errors::one(ConfigError::new("", format!("cannot read {}: {e}", path.display()))))?;
    parse_bootstrap(&path.to_string_lossy(), &text)
}

/// Decodes a bootstrap document (JSON or YAML) and translates it. All errors
/// found are returned, each with its field path.
pub fn parse_bootstrap(name: &str, text: &str) -> Result<config::Bootstrap, Errors> {
    let result = (|| {
        let value = decode::parse_document(name, text).map_err(Errors::one)?;
        let pool = ApiPool::load().map_err(Errors::one)?;
        let msg = pool.decode_value(BOOTSTRAP, value)?;
        let ctx = Ctx::new(&pool);
        let model = translate::bootstrap(Msg::new(msg, String::new(), &ctx));
        let (errors, warnings) = ctx.into_result();
        match model {
            Some(mut b) if errors.is_empty() => {
                b.ignored = warnings;
                Ok(b)
            }
            _ => Err(Errors(errors)),
        }
    })();
    // The reflection pool and the decoded tree are gone; give their pages back.
    decode::release_memory();
    result
}
