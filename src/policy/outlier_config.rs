//! The outlier detector's vocabulary: its config with Envoy's defaults
//! (`config.cluster.v3.OutlierDetection`), the outcomes it is told about, the
//! ejection types, and Envoy's `outlier_detection.*` stats. The detector
//! itself is `outlier.rs`.

use std::time::Duration;

/// Envoy's `config.cluster.v3.OutlierDetection`, with its defaults (outlier_detection.proto).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// `None` when the field is absent; Envoy then uses max(300s, base_ejection_time).
    pub max_ejection_time: Option<Duration>,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    /// Envoy >= 1.31: lets the first ejection through even when max_ejection_percent forbids it.
    pub always_eject_one_host: bool,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub split_external_local_origin_errors: bool,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: None,
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            split_external_local_origin_errors: false,
        }
    }
}

impl OutlierConfig {
    /// As DetectorConfig: an absent max_ejection_time is max(300s, base_ejection_time).
    pub fn effective_max_ejection_time(&self) -> Duration {
        self.max_ejection_time
            .unwrap_or(Duration::from_secs(300).max(self.base_ejection_time))
    }

    /// The proto's validation rules plus DetectorImpl::create's max >= base check.
    pub fn validate(&self) -> Result<(), String> {
        let percentages = [
            ("max_ejection_percent", self.max_ejection_percent),
            ("enforcing_consecutive_5xx", self.enforcing_consecutive_5xx),
            ("enforcing_success_rate", self.enforcing_success_rate),
            (
                "enforcing_consecutive_gateway_failure",
                self.enforcing_consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                self.enforcing_consecutive_local_origin_failure,
            ),
            (
                "enforcing_local_origin_success_rate",
                self.enforcing_local_origin_success_rate,
            ),
            ("failure_percentage_threshold", self.failure_percentage_threshold),
            ("enforcing_failure_percentage", self.enforcing_failure_percentage),
            (
                "enforcing_failure_percentage_local_origin",
                self.enforcing_failure_percentage_local_origin,
            ),
        ];
        for (name, value) in percentages {
            if value > 100 {
                return Err(format!("outlier_detection.{name} must be at most 100"));
            }
        }
        let positive = [
            ("interval", Some(self.interval)),
            ("base_ejection_time", Some(self.base_ejection_time)),
            ("max_ejection_time", self.max_ejection_time),
        ];
        for (name, value) in positive {
            if value == Some(Duration::ZERO) {
                return Err(format!("outlier_detection.{name} must be greater than 0"));
            }
        }
        if self.effective_max_ejection_time() < self.base_ejection_time {
            return Err("outlier_detection.max_ejection_time cannot be smaller than base_ejection_time".into());
        }
        Ok(())
    }

    pub(super) fn enforcing(&self, kind: EjectionType) -> u32 {
        match kind {
            EjectionType::Consecutive5xx => self.enforcing_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => self.enforcing_consecutive_gateway_failure,
            EjectionType::ConsecutiveLocalOriginFailure => self.enforcing_consecutive_local_origin_failure,
            EjectionType::SuccessRate => self.enforcing_success_rate,
            EjectionType::SuccessRateLocalOrigin => self.enforcing_local_origin_success_rate,
            EjectionType::FailurePercentage => self.enforcing_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => self.enforcing_failure_percentage_local_origin,
        }
    }
}

/// What one upstream attempt told us about a host, in the router's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this status (for gRPC, the grpc-status mapped to HTTP, as the
    /// router does when grpc-status is in the headers).
    Http(u16),
    /// The connection (or stream) to the host was established; an HTTP result follows.
    LocalOriginSuccess,
    /// Connection established and that is the whole transaction (TCP proxy).
    LocalOriginSuccessFinal,
    /// Connecting failed. Do not report circuit-breaker overflow: Envoy ignores it (issue 25487).
    ConnectFailure,
    /// The request timed out before response headers.
    Timeout,
    /// The stream or connection was reset before response headers.
    Reset,
}

/// Envoy's `data.cluster.v3.OutlierEjectionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectionType {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

impl EjectionType {
    /// The enum value's name in Envoy's outlier event log.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionType::Consecutive5xx => "CONSECUTIVE_5XX",
            EjectionType::ConsecutiveGatewayFailure => "CONSECUTIVE_GATEWAY_FAILURE",
            EjectionType::ConsecutiveLocalOriginFailure => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
            EjectionType::SuccessRate => "SUCCESS_RATE",
            EjectionType::SuccessRateLocalOrigin => "SUCCESS_RATE_LOCAL_ORIGIN",
            EjectionType::FailurePercentage => "FAILURE_PERCENTAGE",
            EjectionType::FailurePercentageLocalOrigin => "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
        }
    }
}

/// Envoy's ALL_OUTLIER_DETECTION_STATS: a `pub u64` per stat, and `named()` with Envoy's names.
macro_rules! outlier_stats {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Envoy's `cluster.<name>.outlier_detection.*` stats as plain numbers.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct OutlierStats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl OutlierStats {
            /// (name under `cluster.<name>.`, value) for every stat; `ejections_active` is a gauge.
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((concat!("outlier_detection.", stringify!($name)), self.$name),)*]
            }
        }
    };
}

outlier_stats! {
    /// Gauge: hosts ejected right now.
    ejections_active,
    ejections_overflow,
    ejections_enforced_total,
    /// Deprecated in Envoy; counts consecutive-5xx and success-rate outliers that passed the cap.
    ejections_total,
    /// Deprecated in Envoy; counts every consecutive-5xx detection.
    ejections_consecutive_5xx,
    /// Deprecated in Envoy; counts every success-rate outlier (both origins).
    ejections_success_rate,
    ejections_detected_consecutive_5xx,
    ejections_enforced_consecutive_5xx,
    ejections_detected_consecutive_gateway_failure,
    ejections_enforced_consecutive_gateway_failure,
    ejections_detected_consecutive_local_origin_failure,
    ejections_enforced_consecutive_local_origin_failure,
    ejections_detected_success_rate,
    ejections_enforced_success_rate,
    ejections_detected_local_origin_success_rate,
    ejections_enforced_local_origin_success_rate,
    ejections_detected_failure_percentage,
    ejections_enforced_failure_percentage,
    ejections_detected_local_origin_failure_percentage,
    ejections_enforced_local_origin_failure_percentage,
}

impl OutlierStats {
    pub(super) fn detected(&mut self, kind: EjectionType) {
        match kind {
            EjectionType::Consecutive5xx => self.ejections_detected_consecutive_5xx += 1,
            EjectionType::ConsecutiveGatewayFailure => self.ejections_detected_consecutive_gateway_failure += 1,
            EjectionType::ConsecutiveLocalOriginFailure => {
                self.ejections_detected_consecutive_local_origin_failure += 1
            }
            EjectionType::SuccessRate => self.ejections_detected_success_rate += 1,
            EjectionType::SuccessRateLocalOrigin => self.ejections_detected_local_origin_success_rate += 1,
            EjectionType::FailurePercentage => self.ejections_detected_failure_percentage += 1,
            EjectionType::FailurePercentageLocalOrigin => self.ejections_detected_local_origin_failure_percentage += 1,
        }
    }

    pub(super) fn enforced(&mut self, kind: EjectionType) {
        self.ejections_enforced_total += 1;
        match kind {
            EjectionType::Consecutive5xx => self.ejections_enforced_consecutive_5xx += 1,
            EjectionType::ConsecutiveGatewayFailure => self.ejections_enforced_consecutive_gateway_failure += 1,
            EjectionType::ConsecutiveLocalOriginFailure => {
                self.ejections_enforced_consecutive_local_origin_failure += 1
            }
            EjectionType::SuccessRate => self.ejections_enforced_success_rate += 1,
            EjectionType::SuccessRateLocalOrigin => self.ejections_enforced_local_origin_success_rate += 1,
            EjectionType::FailurePercentage => self.ejections_enforced_failure_percentage += 1,
            EjectionType::FailurePercentageLocalOrigin => self.ejections_enforced_local_origin_failure_percentage += 1,
        }
    }
}
