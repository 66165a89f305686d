use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: microseconds since the Unix epoch, UTC.
///
/// The store assigns an event's `recorded_at`; along the log it never decreases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// This instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_micros(self.0.unsigned_abs())
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day counted from 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-23T19:10:27.123456Z`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let micros = self.0.rem_euclid(MICROS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let secs = micros / 1_000_000;
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            micros % 1_000_000
        )
    }
}

/// Why a text is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not an RFC 3339 time like 2026-11-23T19:10:27Z ({problem})")]
pub struct TimestampError {
    text: String,
    problem: &'static str,
}

/// Parses RFC 3339: `2026-11-23T19:10:27Z`, with optional fractional seconds (kept to the
/// microsecond), `t` or a space for `T`, and `Z`, `z` or a `+hh:mm`/`-hh:mm` offset.
impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |problem| TimestampError {
            text: text.to_string(),
            problem,
        };
        let b = text.as_bytes();
        let num = |range: std::ops::Range<usize>| -> Result<i64, TimestampError> {
            let digits = b.get(range).ok_or_else(|| fail("too short"))?;
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(fail("a digit is missing"));
            }
            Ok(digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
        };
        if b.len() < 20 {
            return Err(fail("too short"));
        }
        if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
            return Err(fail("the separators are not YYYY-MM-DDTHH:MM:SS"));
        }
        if !matches!(b[10], b'T' | b't' | b' ') {
            return Err(fail("date and time must be separated by T"));
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let month_days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&month) {
            return Err(fail("no such month"));
        }
        if day < 1 || day > month_days[(month - 1) as usize] {
            return Err(fail("no such day in that month"));
        }
        // 60 is a leap second; it is counted as the last second of the minute.
        if hour > 23 || minute > 59 || second > 60 {
            return Err(fail("no such time of day"));
        }
        let mut i = 19;
        let mut micros = 0i64;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 6 {
                    micros = micros * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            if i == start {
                return Err(fail("a fraction needs digits"));
            }
            for _ in (i - start)..6 {
                micros *= 10;
            }
        }
        let offset_minutes = match b.get(i..) {
            Some(b"Z") | Some(b"z") => 0,
            Some(&[sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]) => {
                let digits = [h1, h2, m1, m2];
                if !digits.iter().all(u8::is_ascii_digit) {
                    return Err(fail("the offset is not +hh:mm"));
                }
                let h = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
                let m = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
                if h > 23 || m > 59 {
                    return Err(fail("no such offset"));
                }
                if sign == b'+' {
                    h * 60 + m
                } else {
                    -(h * 60 + m)
                }
            }
            _ => return Err(fail("it must end with Z or an offset like +01:00")),
        };
        let days = days_from_civil(year, month as u32, day as u32);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
        Ok(Timestamp(secs * 1_000_000 + micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let t = Timestamp(1_795_000_000_123_456);
        let s = t.to_string();
        assert_eq!(s, "2026-11-18T11:06:40.123456Z");
        assert_eq!(s.parse::<Timestamp>().unwrap(), t);
        // Before the epoch, and far from it.
        for micros in [
            -1,
            -86_400_000_000,
            -62_135_596_800_000_000,
            253_402_300_799_999_999,
            0,
        ] {
            let t = Timestamp(micros);
            assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t, "{t}");
        }
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn parses_the_forms_rfc_3339_allows() {
        let z: Timestamp = "2026-11-23T19:10:27Z".parse().unwrap();
        assert_eq!(z.to_string(), "2026-11-23T19:10:27.000000Z");
        let offset: Timestamp = "2026-11-23T20:40:27.5+01:30".parse().unwrap();
        assert_eq!(offset.0, z.0 + 500_000);
        let west: Timestamp = "2026-11-23 14:10:27-05:00".parse().unwrap();
        assert_eq!(west, z);
        let nanos: Timestamp = "2026-11-23t19:10:27.123456789z".parse().unwrap();
        assert_eq!(nanos.0, z.0 + 123_456);
        let leap: Timestamp = "2024-02-29T00:00:00Z".parse().unwrap();
        assert_eq!(leap.to_string(), "2024-02-29T00:00:00.000000Z");
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T19:10:27",
            "2026-11-23T19:10:27.Z",
            "2026-11-23T19:10:27+1:00",
            "2026-11-23T19:10:27Zjunk",
        ] {
            let e = bad.parse::<Timestamp>().unwrap_err();
            assert!(
                e.to_string().contains("is not an RFC 3339 time"),
                "{bad}: {e}"
            );
        }
    }
}
