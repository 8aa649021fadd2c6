//! RFC 3339 UTC timestamps with microsecond precision, formatted and parsed by
//! hand (civil-from-days) so the crate needs no date library.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Microseconds in a day.
const MICROS_PER_DAY: u64 = 86_400_000_000;

/// 9999-12-31T23:59:59.999999Z, the last instant a four-digit year can show.
const MAX_MICROS: u64 = 253_402_300_799_999_999;

/// An instant in UTC, kept as microseconds since the Unix epoch.
///
/// It serializes as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fraction digits,
/// always `Z`), e.g. `2024-02-29T12:34:56.789012Z`. Instants before the epoch
/// are clamped to the epoch and instants after the year 9999 to its last
/// microsecond: a four-digit year keeps the text sortable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    micros: u64,
}

/// Why a timestamp's text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a timestamp of the form YYYY-MM-DDTHH:MM:SS.ffffffZ: {text:?}")]
pub struct TimestampError {
    /// The rejected text, cut to 64 bytes.
    pub text: String,
}

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00.000000Z.
    pub const EPOCH: Self = Self { micros: 0 };

    /// The current time of the system clock.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Truncates `time` to whole microseconds (clamped as the type says).
    pub fn from_system_time(time: SystemTime) -> Self {
        let micros = time.duration_since(UNIX_EPOCH).map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        });
        Self::from_unix_micros(micros)
    }

    /// The instant `micros` microseconds after the epoch (clamped to the year
    /// 9999).
    pub const fn from_unix_micros(micros: u64) -> Self {
        Self {
            micros: if micros > MAX_MICROS {
                MAX_MICROS
            } else {
                micros
            },
        }
    }

    /// Microseconds since the epoch.
    pub const fn unix_micros(self) -> u64 {
        self.micros
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros)
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, restricted to days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of an era's
    // year; 719_468 is the day number of 1970-01-01 from there.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`]; `None` before 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = year / 400;
    let yoe = year % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

fn is_leap(year: u64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.micros / MICROS_PER_DAY);
        let in_day = self.micros % MICROS_PER_DAY;
        let secs = in_day / 1_000_000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            in_day % 1_000_000
        )
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// Accepts exactly the form [`Display`](fmt::Display) writes.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text.as_bytes()).ok_or_else(|| TimestampError {
            text: text.chars().take(64).collect(),
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, 27 bytes.
fn parse(b: &[u8]) -> Option<Timestamp> {
    let [
        y0,
        y1,
        y2,
        y3,
        b'-',
        m0,
        m1,
        b'-',
        d0,
        d1,
        b'T',
        h0,
        h1,
        b':',
        i0,
        i1,
        b':',
        s0,
        s1,
        b'.',
        f @ ..,
        b'Z',
    ] = b
    else {
        return None;
    };
    if f.len() != 6 {
        return None;
    }
    let num = |digits: &[u8]| -> Option<u64> {
        digits.iter().try_fold(0u64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
        })
    };
    let year = num(&[*y0, *y1, *y2, *y3])?;
    let month = num(&[*m0, *m1])?;
    let day = num(&[*d0, *d1])?;
    let hour = num(&[*h0, *h1])?;
    let minute = num(&[*i0, *i1])?;
    let second = num(&[*s0, *s1])?;
    let fraction = num(f)?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let micros =
        days * MICROS_PER_DAY + (hour * 3600 + minute * 60 + second) * 1_000_000 + fraction;
    Some(Timestamp { micros })
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(micros: u64) -> String {
        Timestamp::from_unix_micros(micros).to_string()
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1), "1970-01-01T00:00:00.000001Z");
        // 2000-02-29 is a leap day in a year divisible by 400.
        assert_eq!(at(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        // 2024-02-29T12:34:56.789012Z (date -d ... +%s gives 1709210096).
        assert_eq!(at(1_709_210_096_789_012), "2024-02-29T12:34:56.789012Z");
        // The day after 2100-02-28 is March 1st: 2100 is not a leap year.
        assert_eq!(at(4_107_542_400_000_000), "2100-03-01T00:00:00.000000Z");
        assert_eq!(at(1_234_567_890_000_000), "2009-02-13T23:31:30.000000Z");
        assert_eq!(at(u64::MAX), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn system_time_truncates_and_clamps() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_500_999);
        assert_eq!(Timestamp::from_system_time(t).unix_micros(), 1500);
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Timestamp::from_system_time(before), Timestamp::EPOCH);
    }

    #[test]
    fn parses_what_it_formats_and_rejects_the_rest() {
        let t: Timestamp = "2024-02-29T12:34:56.789012Z".parse().expect("valid");
        assert_eq!(t.unix_micros(), 1_709_210_096_789_012);
        for bad in [
            "",
            "2023-02-29T00:00:00.000000Z", // not a leap year
            "2024-13-01T00:00:00.000000Z",
            "2024-01-01T24:00:00.000000Z",
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00.00000Z",
            "2024-01-01T00:00:00.000000+00:00",
            "1969-12-31T23:59:59.999999Z",
            "2024-01-01 00:00:00.000000Z",
            "２024-01-01T00:00:00.000000Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn round_trips(micros in 0..=MAX_MICROS) {
            let t = Timestamp::from_unix_micros(micros);
            let text = t.to_string();
            prop_assert_eq!(text.len(), 27);
            prop_assert_eq!(text.parse::<Timestamp>(), Ok(t));
        }

        #[test]
        fn days_invert(days in 0u64..2_932_897) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!(d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), Some(days));
        }
    }
}
