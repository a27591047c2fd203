//! The traffic-policy scenes, each against the config remora took over xDS:
//! a reviews v2 instance that fails and is ejected by outlier detection, a
//! flaky ratings instance hidden by retries, and a burst to details meeting
//! its circuit breaker. A scene commands the sample instances, sends traffic
//! through remora, reads remora's stats as an operator would, prints what
//! was configured and measured, and returns what was not as configured.
//! Each judges with a plain function over what it measured, tested beside it.

mod breaker;
mod ejection;
mod retries;

pub(super) use breaker::{breaker, BREAKER};
pub(super) use ejection::{ejection, EJECTION};
pub(super) use retries::{retries, RETRIES};

#[cfg(test)]
mod test_samples {
    use std::time::Duration;

    use bytes::Bytes;

    use crate::demo::traffic::{Answer, Kind, Sample};

    /// A sample answered `status` by `instance`.
    pub(super) fn answer(status: u16, instance: &str) -> Sample {
        Sample {
            kind: Kind::Canary,
            outcome: Ok(Answer {
                status,
                version: None,
                instance: Some(instance.into()),
                seen_path: None,
                overloaded: false,
                body: Bytes::new(),
            }),
            latency: Duration::ZERO,
        }
    }
}
