//! Time as plain values, so the decision can run against a fake clock.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

/// Seconds since the Unix epoch. Sessions and decisions work at one-second resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// How far ahead of the wall clock a time read from shared state may move this process's
    /// clock: enough for instances a little out of step, too little for one corrupt record or a
    /// fast instance to expire sessions everywhere. Sessions stamped further ahead cannot be
    /// timed and are ended instead.
    pub const MAX_OBSERVED_AHEAD: Duration = Duration::from_secs(300);

    /// The system's wall clock, as is. Stores use it for their own expiry times; the gateway
    /// admits requests at the time of its own clock (`aalgate::clock`), which never runs
    /// backwards, and hands that time to the policy core.
    pub fn wall() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// Converts a `SystemTime`; times before 1970 clamp to 0.
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is in the future.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_secs(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_secs()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Parses a human duration such as `90s`, `15m`, `12h` or `30d` (whole seconds, > 0).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "invalid duration {s:?} ({e}); write a number and a unit, e.g. 90s, 15m, 12h or 30d"
        )
    })?;
    if d.is_zero() {
        return Err(format!(
            "duration {s:?} is zero; give a positive duration such as 15m"
        ));
    }
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "duration {s:?} has a fraction of a second; use whole seconds"
        ));
    }
    Ok(d)
}

/// Formats a duration the way policy files write it (`12h`, `30m`, `1d 6h`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A positive, whole-second duration read from a policy or config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A positive duration: a number and a unit (s, m, h, d), e.g. 90s, 15m, 12h, 30d.",
            "pattern": "^\\s*[0-9]+\\s*(s|sec|secs|m|min|mins|h|hr|hrs|hours?|d|days?)(\\s*[0-9]+\\s*(s|sec|secs|m|min|mins|h|hr|hrs|hours?|d|days?))*\\s*$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::from_secs(43200)), "12h");
    }

    #[test]
    fn timestamps_saturate() {
        assert_eq!(Timestamp(5).since(Timestamp(10)), Duration::ZERO);
        assert_eq!(Timestamp(10).since(Timestamp(4)), Duration::from_secs(6));
        assert_eq!(
            Timestamp(u64::MAX).plus(Duration::from_secs(1)),
            Timestamp(u64::MAX)
        );
    }
}
