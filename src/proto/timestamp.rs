//! `google.protobuf.Timestamp`, printed in its canonical protobuf JSON form.
//!
//! `build.rs` maps this one well-known type here; the others stay
//! `pbjson_types`'s. pbjson-types prints a timestamp with chrono's
//! `to_rfc3339()` (`2026-01-01T09:30:00+00:00`), while the protobuf JSON
//! mapping, which every other protobuf runtime prints and some parsers insist
//! on, is UTC with a `Z` and 0, 3, 6 or 9 fractional digits
//! (`2026-01-01T09:30:00Z`, `…00.250Z`). Whatever serializes our messages as
//! JSON (the CLI's `-o json` today) goes through this type's serde impls, so
//! they all print the canonical form.
//!
//! Invariants:
//! - The binary encoding is the message's (`seconds` = field 1, `nanos` =
//!   field 2), derived by prost: nothing on the wire or on disk changes.
//! - Printing: UTC, `Z`, and the fewest of 0, 3, 6 or 9 fractional digits that
//!   keep every non-zero digit (chrono's `SecondsFormat::AutoSi`).
//! - Parsing: any RFC 3339 time with any offset (`+02:00`, `-05:30`, `Z`),
//!   converted to UTC — what pbjson-types accepted, so no input that parsed
//!   before is refused now.
//!
//! IMPLEMENTATION CAVEATS: a value chrono cannot represent (`nanos` outside
//! 0..1e9, or a year beyond ±262,143) fails to serialize with an error, as it
//! did with pbjson-types; protobuf itself allows only years 1 to 9999. Parsing
//! keeps RFC 3339's strictness (a date alone or a missing offset is refused).

// Hand-written: the lints `proto.rs` allows for generated code apply here again.
#![warn(clippy::all)]

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant: seconds and nanoseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z (negative before it).
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds into that second, 0 to 999,999,999 (even before 1970).
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Timestamp {
            seconds: value.timestamp(),
            nanos: value.timestamp_subsec_nanos() as i32,
        }
    }
}

impl TryFrom<Timestamp> for DateTime<Utc> {
    type Error = String;

    fn try_from(value: Timestamp) -> Result<Self, Self::Error> {
        // chrono reads nanos of 1e9 and more as a leap second; protobuf does not.
        u32::try_from(value.nanos)
            .ok()
            .filter(|nanos| *nanos < 1_000_000_000)
            .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
            .ok_or_else(|| format!("timestamp {}s {}ns is out of range", value.seconds, value.nanos))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let time = DateTime::<Utc>::try_from(*self).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

/// Reads an RFC 3339 string into a [`Timestamp`].
struct Rfc3339Visitor;

impl Visitor<'_> for Rfc3339Visitor {
    type Value = Timestamp;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an RFC 3339 time, e.g. \"2026-01-01T09:30:00Z\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
        let time = DateTime::parse_from_rfc3339(text).map_err(|e| E::custom(format!("{text:?}: {e}")))?;
        Ok(time.with_timezone(&Utc).into())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(Rfc3339Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T09:30:00Z.
    const SECONDS: i64 = 1_767_259_800;

    fn json(nanos: i32) -> String {
        serde_json::to_string(&Timestamp {
            seconds: SECONDS,
            nanos,
        })
        .unwrap()
    }

    fn parse(text: &str) -> Timestamp {
        serde_json::from_str(&format!("{text:?}")).unwrap()
    }

    #[test]
    fn prints_utc_with_z_and_0_3_6_or_9_fraction_digits() {
        assert_eq!(json(0), r#""2026-01-01T09:30:00Z""#);
        assert_eq!(json(250_000_000), r#""2026-01-01T09:30:00.250Z""#);
        assert_eq!(json(250_500_000), r#""2026-01-01T09:30:00.250500Z""#);
        assert_eq!(json(250_500_001), r#""2026-01-01T09:30:00.250500001Z""#);
        assert_eq!(json(1), r#""2026-01-01T09:30:00.000000001Z""#);
    }

    #[test]
    fn round_trips_at_every_precision() {
        for nanos in [0, 7_000_000, 7_000, 7, 999_999_999] {
            let t = Timestamp {
                seconds: SECONDS,
                nanos,
            };
            let back: Timestamp = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
            assert_eq!(back, t);
        }
        // Before 1970: nanos still count forwards within the second.
        let early = Timestamp {
            seconds: -1,
            nanos: 500_000_000,
        };
        assert_eq!(
            serde_json::to_string(&early).unwrap(),
            r#""1969-12-31T23:59:59.500Z""#
        );
        assert_eq!(parse("1969-12-31T23:59:59.500Z"), early);
    }

    #[test]
    fn parses_any_offset_into_utc() {
        let utc = Timestamp {
            seconds: SECONDS,
            nanos: 0,
        };
        assert_eq!(parse("2026-01-01T11:30:00+02:00"), utc);
        assert_eq!(parse("2026-01-01T04:00:00-05:30"), utc);
        assert_eq!(parse("2026-01-01T09:30:00+00:00"), utc);
        assert_eq!(parse("2026-01-01t09:30:00z"), utc);
        assert_eq!(
            parse("2026-01-01T11:30:00.123456+02:00"),
            Timestamp {
                seconds: SECONDS,
                nanos: 123_456_000
            }
        );
    }

    #[test]
    fn refuses_what_is_not_rfc_3339_and_what_cannot_be_printed() {
        for bad in ["2026-01-01", "2026-01-01T09:30:00", "yesterday", ""] {
            let err = serde_json::from_str::<Timestamp>(&format!("{bad:?}")).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
        for nanos in [-1, 1_000_000_000] {
            let t = Timestamp {
                seconds: SECONDS,
                nanos,
            };
            assert!(serde_json::to_string(&t).is_err(), "{nanos}");
        }
    }

    #[test]
    fn binary_encoding_is_the_well_known_types() {
        use prost::Message;
        let t = Timestamp {
            seconds: SECONDS,
            nanos: 250_000_000,
        };
        let theirs = pbjson_types::Timestamp {
            seconds: SECONDS,
            nanos: 250_000_000,
        };
        assert_eq!(t.encode_to_vec(), theirs.encode_to_vec());
        assert_eq!(Timestamp::decode(&*theirs.encode_to_vec()).unwrap(), t);
    }
}
