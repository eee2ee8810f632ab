//! The wall clock, as msgbus writes it: RFC 3339 with microseconds, in
//! UTC. Below every other module.

/// The current time as RFC 3339 with microseconds, in UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `t` as RFC 3339 to the second, in UTC (times people read, such as a
/// token's expiry and last use).
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
