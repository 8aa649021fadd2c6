//! Configuration: defaults, validation errors, serde, and the public labels.
#![cfg(test)]

use std::error::Error as _;

use paddock_anomaly::{
    Action, ConfigError, Detector, DetectorConfig, ProtocolErrorKind, RuleConfigError, RuleId,
    StatConfigError,
};

#[test]
fn the_default_config_validates() {
    assert_eq!(DetectorConfig::default().validate(), Ok(()));
    let d = Detector::new(DetectorConfig::default()).expect("valid");
    assert_eq!(d.scopes(), 0);
    assert_eq!(d.config(), &DetectorConfig::default());
    // 300 + 300 + 3 × 256 values, 3 + 1 + 2 + 10 timestamps.
    assert_eq!(DetectorConfig::default().max_samples_per_scope(), 1384);
}

#[test]
fn detector_is_send() {
    fn send<T: Send>() {}
    send::<Detector>();
}

fn error(edit: impl FnOnce(&mut DetectorConfig)) -> ConfigError {
    let mut config = DetectorConfig::default();
    edit(&mut config);
    Detector::new(config).expect_err("invalid")
}

#[test]
fn invalid_configs_are_typed_errors() {
    assert_eq!(error(|c| c.max_scopes = 0), ConfigError::MaxScopes(0));
    assert_eq!(error(|c| c.bucket_ms = 0), ConfigError::BucketMs(0));
    assert_eq!(
        error(|c| c.bucket_ms = 60_001),
        ConfigError::BucketMs(60_001)
    );
    assert_eq!(
        error(|c| c.idle_timeout_ms = 1000),
        ConfigError::IdleTimeout {
            idle_timeout_ms: 1000,
            needed_ms: 600_000
        }
    );
    let rule = |rule, source| ConfigError::Rule { rule, source };
    let stat = |rule, source| ConfigError::Statistic { rule, source };
    assert_eq!(
        error(|c| c.repeated_exec_timeouts.count = 0),
        rule(RuleId::RepeatedExecTimeouts, RuleConfigError::ZeroCount)
    );
    assert_eq!(
        error(|c| c.egress_denied.count = 10_001),
        rule(RuleId::EgressDenied, RuleConfigError::CountTooLarge(10_001))
    );
    assert_eq!(
        error(|c| c.reset_failures.window_ms = 0),
        rule(RuleId::ResetFailures, RuleConfigError::ZeroWindow)
    );
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        let e = error(|c| c.cpu_pinned.utilization = bad);
        assert!(
            matches!(
                e,
                ConfigError::Rule {
                    rule: RuleId::CpuPinned,
                    source: RuleConfigError::Utilization(_)
                }
            ),
            "{e:?}"
        );
    }
    assert_eq!(
        error(|c| c.cpu_pinned.max_gap_ms = 0),
        rule(RuleId::CpuPinned, RuleConfigError::ZeroMaxGap)
    );
    assert_eq!(
        error(|c| c.cpu_pinned.duration_ms = 0),
        rule(RuleId::CpuPinned, RuleConfigError::ZeroDuration)
    );
    assert_eq!(
        error(|c| c.exec_duration_outlier.window = 0),
        stat(RuleId::ExecDurationOutlier, StatConfigError::ZeroWindow)
    );
    assert_eq!(
        error(|c| c.acquire_wait_outlier.window = 1 << 20),
        stat(
            RuleId::AcquireWaitOutlier,
            StatConfigError::WindowTooLarge(1 << 20)
        )
    );
    assert_eq!(
        error(|c| c.reset_duration_outlier.min_samples = 257),
        stat(
            RuleId::ResetDurationOutlier,
            StatConfigError::MinSamples {
                min_samples: 257,
                window: 256
            }
        )
    );
    for bad in [0.0, -1.0, f64::INFINITY, f64::NAN] {
        let e = error(|c| c.exec_rate_spike.threshold = bad);
        assert!(
            matches!(
                e,
                ConfigError::Statistic {
                    rule: RuleId::ExecRateSpike,
                    source: StatConfigError::Threshold(_)
                }
            ),
            "{e:?}"
        );
    }
    assert_eq!(
        error(|c| c.output_rate_spike.floor_per_s = -1.0),
        stat(RuleId::OutputRateSpike, StatConfigError::FloorInvalid(-1.0))
    );
    assert_eq!(
        error(|c| c.output_rate_spike.mad_floor_per_s = 0.0),
        stat(
            RuleId::OutputRateSpike,
            StatConfigError::MadFloorNotPositive
        )
    );
    assert_eq!(
        error(|c| c.exec_duration_outlier.mad_floor_ms = 0),
        stat(
            RuleId::ExecDurationOutlier,
            StatConfigError::MadFloorNotPositive
        )
    );
    assert_eq!(
        error(|c| c.exec_duration_outlier.mad_floor_fraction = -0.1),
        stat(
            RuleId::ExecDurationOutlier,
            StatConfigError::MadFloorFraction(-0.1)
        )
    );
}

#[test]
fn error_messages_do_not_repeat_their_source() {
    let e = error(|c| c.exec_duration_outlier.window = 0);
    assert_eq!(e.to_string(), "invalid exec_duration_outlier config");
    assert_eq!(
        e.source().expect("a source").to_string(),
        "window must not be 0"
    );
}

#[test]
fn serde_round_trip() {
    let mut config = DetectorConfig::default();
    config.cpu_pinned.action = Action::EndLease;
    config.egress_denied.action = Action::ThrottleTenant;
    config.exec_rate_spike.floor_per_s = 12.5;
    let json = serde_json::to_string_pretty(&config).expect("serializes");
    let back: DetectorConfig = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, config);
    assert!(json.contains("\"action\": \"throttle_tenant\""), "{json}");
    assert!(json.contains("\"idle_timeout_ms\": 3600000"), "{json}");
}

#[test]
fn missing_keys_keep_their_defaults() {
    let config: DetectorConfig =
        serde_json::from_str(r#"{"cooldown_ms": 5000}"#).expect("deserializes");
    assert_eq!(config.cooldown_ms, 5000);
    assert_eq!(config.cpu_pinned, DetectorConfig::default().cpu_pinned);
    // A rule's section must be complete: its defaults depend on the rule.
    let partial = r#"{"cpu_pinned": {"utilization": 0.9}}"#;
    assert!(serde_json::from_str::<DetectorConfig>(partial).is_err());
}

#[test]
fn unknown_keys_are_rejected() {
    let e = serde_json::from_str::<DetectorConfig>(r#"{"cooldown": 5000}"#).expect_err("typo");
    assert!(e.to_string().contains("unknown field `cooldown`"), "{e}");
    let mut value = serde_json::to_value(DetectorConfig::default()).expect("serializes");
    value["reset_failures"]["windw_ms"] = 1.into();
    let e = serde_json::from_value::<DetectorConfig>(value).expect_err("typo");
    assert!(e.to_string().contains("unknown field `windw_ms`"), "{e}");
    let bad_action = serde_json::from_str::<Action>(r#""reboot""#);
    assert!(bad_action.is_err());
}

#[test]
fn labels_are_stable_snake_case() {
    let names: Vec<_> = RuleId::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "repeated_exec_timeouts",
            "agent_protocol_errors",
            "reset_failures",
            "cpu_pinned",
            "egress_denied",
            "exec_rate_spike",
            "output_rate_spike",
            "exec_duration_outlier",
            "reset_duration_outlier",
            "acquire_wait_outlier",
        ]
    );
    for rule in RuleId::ALL {
        let json = serde_json::to_string(&rule).expect("serializes");
        assert_eq!(json, format!("\"{}\"", rule.as_str()));
        assert_eq!(rule.to_string(), rule.as_str());
    }
    for action in Action::ALL {
        let json = serde_json::to_string(&action).expect("serializes");
        assert_eq!(json, format!("\"{}\"", action.as_str()));
    }
    let kinds: Vec<_> = ProtocolErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["crc", "resync", "unknown_kind", "window_overrun", "other"]
    );
    // Every rule has its own configuration section, under its own name.
    let value = serde_json::to_value(DetectorConfig::default()).expect("serializes");
    for rule in RuleId::ALL {
        assert!(value.get(rule.as_str()).is_some(), "{rule}");
    }
}
