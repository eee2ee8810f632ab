//! The wall clock, as msgbus writes it: RFC 3339 with microseconds, in
//! UTC. Below every other module.

/// The current time as RFC 3339 with microseconds, in UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
