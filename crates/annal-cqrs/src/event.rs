//! Typed events: a Rust enum whose variants are an aggregate's event types.
//!
//! An event is stored as its variant's name (the event type), the schema version its type
//! declares, and the variant's content as JSON (the data). `#[serde(rename = "...")]` on a
//! variant renames its event type. Unit variants are stored with `null` as their data.
//!
//! ```
//! use annal_cqrs::{decode, encode, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum AccountEvent {
//!     Opened { owner: String },
//!     Deposited { amount: u64 },
//!     Closed,
//! }
//!
//! impl Event for AccountEvent {
//!     fn schema_version(event_type: &str) -> u32 {
//!         if event_type == "Opened" { 2 } else { 1 }
//!     }
//! }
//!
//! let e = encode(&AccountEvent::Deposited { amount: 5 }).unwrap();
//! assert_eq!((e.event_type.as_str(), e.schema_version), ("Deposited", 1));
//! assert_eq!(e.data, br#"{"amount":5}"#);
//! let back: AccountEvent = decode("Deposited", &e.data).unwrap();
//! assert_eq!(back, AccountEvent::Deposited { amount: 5 });
//! ```

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};
use serde::Serialize;

use crate::CodecError;

/// An aggregate's events: an enum, serialized with serde, whose variant names are the event
/// types (serde's default, externally tagged representation).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema version this code writes for `event_type`: 1 until the type's shape
    /// changes, then the version the upcasters bring older events up to.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// The tags the event carries, so that decisions can select it by tag (`account:42`).
    fn tags(&self) -> Vec<String> {
        Vec::new()
    }

    /// The event as a sentence for people, for rendered histories ("deposited 200"). By
    /// default its type and JSON data.
    fn describe(&self) -> String {
        match encode(self) {
            Ok(e) => format!("{} {}", e.event_type, String::from_utf8_lossy(&e.data)),
            Err(e) => e.to_string(),
        }
    }
}

/// An event ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub event_type: String,
    pub schema_version: u32,
    /// The variant's content as JSON.
    pub data: Vec<u8>,
    pub tags: Vec<String>,
}

/// Splits an event into its type, schema version and JSON data.
pub fn encode<E: Event>(event: &E) -> Result<Encoded, CodecError> {
    let event_type = variant_name(event)?;
    let value =
        serde_json::to_value(event).map_err(|e| CodecError::new(event_type, e.to_string()))?;
    let content = match value {
        serde_json::Value::Object(mut map) => map.remove(event_type).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    let data =
        serde_json::to_vec(&content).map_err(|e| CodecError::new(event_type, e.to_string()))?;
    Ok(Encoded {
        schema_version: E::schema_version(event_type),
        tags: event.tags(),
        event_type: event_type.to_string(),
        data,
    })
}

/// The name of the enum variant `event` is, found by a serializer that stops at the first
/// thing it is given.
fn variant_name<E: Serialize>(event: &E) -> Result<&'static str, CodecError> {
    match event.serialize(VariantName) {
        Err(Found::Variant(name)) => Ok(name),
        Err(Found::Other(what)) => Err(CodecError::new(
            "?",
            format!(
                "an event must serialize as an enum variant, whose name is its type; this \
                 one serialized as {what}"
            ),
        )),
        Ok(never) => match never {},
    }
}

/// What [`VariantName`] found, as its "error" so that it stops at once.
#[derive(Debug)]
enum Found {
    Variant(&'static str),
    Other(String),
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Found {}

impl serde::ser::Error for Found {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Found::Other(msg.to_string())
    }
}

struct VariantName;

macro_rules! not_a_variant {
    ($($method:ident($($arg:ty),*) -> $what:literal;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Self::Ok, Found> {
            Err(Found::Other($what.into()))
        })*
    };
}

impl serde::Serializer for VariantName {
    type Ok = std::convert::Infallible;
    type Error = Found;
    type SerializeSeq = serde::ser::Impossible<Self::Ok, Found>;
    type SerializeTuple = serde::ser::Impossible<Self::Ok, Found>;
    type SerializeTupleStruct = serde::ser::Impossible<Self::Ok, Found>;
    type SerializeTupleVariant = serde::ser::Impossible<Self::Ok, Found>;
    type SerializeMap = serde::ser::Impossible<Self::Ok, Found>;
    type SerializeStruct = serde::ser::Impossible<Self::Ok, Found>;
    type SerializeStructVariant = serde::ser::Impossible<Self::Ok, Found>;

    not_a_variant! {
        serialize_bool(bool) -> "a boolean";
        serialize_i8(i8) -> "a number";
        serialize_i16(i16) -> "a number";
        serialize_i32(i32) -> "a number";
        serialize_i64(i64) -> "a number";
        serialize_u8(u8) -> "a number";
        serialize_u16(u16) -> "a number";
        serialize_u32(u32) -> "a number";
        serialize_u64(u64) -> "a number";
        serialize_f32(f32) -> "a number";
        serialize_f64(f64) -> "a number";
        serialize_char(char) -> "a string";
        serialize_str(&str) -> "a string";
        serialize_bytes(&[u8]) -> "bytes";
        serialize_none() -> "null";
        serialize_unit() -> "null";
        serialize_unit_struct(&'static str) -> "a unit struct";
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Self::Ok, Found> {
        Err(Found::Other("an option".into()))
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Self::Ok, Found> {
        Err(Found::Variant(variant))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Self::Ok, Found> {
        // A newtype around the events is seen through.
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: &T,
    ) -> Result<Self::Ok, Found> {
        Err(Found::Variant(variant))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Found> {
        Err(Found::Other("a sequence".into()))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Found> {
        Err(Found::Other("a tuple".into()))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Found> {
        Err(Found::Other("a tuple struct".into()))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Found> {
        Err(Found::Variant(variant))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Found> {
        Err(Found::Other("a map".into()))
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Found> {
        Err(Found::Other("a struct".into()))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Found> {
        Err(Found::Variant(variant))
    }
}

/// Rebuilds an event from its type and JSON data, the variant's content read straight from
/// the bytes.
pub fn decode<E: Event>(event_type: &str, data: &[u8]) -> Result<E, CodecError> {
    E::deserialize(Stored { event_type, data })
        .map_err(|e| CodecError::new(event_type, e.to_string()))
}

/// A stored event seen by serde as an externally tagged enum: the event type is the variant,
/// the data its content.
struct Stored<'de> {
    event_type: &'de str,
    data: &'de [u8],
}

impl<'de> de::Deserializer<'de> for Stored<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for Stored<'de> {
    type Error = serde_json::Error;
    type Variant = Content<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let variant = seed.deserialize(de::value::StrDeserializer::<serde_json::Error>::new(
            self.event_type,
        ))?;
        Ok((
            variant,
            Content {
                de: serde_json::Deserializer::from_slice(self.data),
            },
        ))
    }
}

/// A variant's content, read from the event's JSON data.
struct Content<'de> {
    de: serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
}

impl<'de> de::VariantAccess<'de> for Content<'de> {
    type Error = serde_json::Error;

    fn unit_variant(mut self) -> Result<(), Self::Error> {
        <de::IgnoredAny as de::Deserialize>::deserialize(&mut self.de)?;
        self.de.end()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let v = seed.deserialize(&mut self.de)?;
        self.de.end()?;
        Ok(v)
    }

    fn tuple_variant<V: Visitor<'de>>(
        mut self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = de::Deserializer::deserialize_seq(&mut self.de, visitor)?;
        self.de.end()?;
        Ok(v)
    }

    fn struct_variant<V: Visitor<'de>>(
        mut self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = de::Deserializer::deserialize_struct(&mut self.de, "", fields, visitor)?;
        self.de.end()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shapes {
        Unit,
        Newtype(u32),
        Tuple(u32, String),
        Struct {
            a: u32,
            #[serde(default)]
            b: Option<String>,
        },
        #[serde(rename = "MoneyDeposited")]
        Renamed {
            amount: u64,
        },
    }

    impl Event for Shapes {
        fn schema_version(event_type: &str) -> u32 {
            if event_type == "Struct" {
                3
            } else {
                1
            }
        }
        fn tags(&self) -> Vec<String> {
            match self {
                Shapes::Struct { a, .. } => vec![format!("a:{a}")],
                _ => vec![],
            }
        }
    }

    #[test]
    fn every_variant_shape_round_trips() {
        let all = [
            (Shapes::Unit, "Unit", "null"),
            (Shapes::Newtype(7), "Newtype", "7"),
            (Shapes::Tuple(1, "x".into()), "Tuple", r#"[1,"x"]"#),
            (
                Shapes::Struct {
                    a: 2,
                    b: Some("y".into()),
                },
                "Struct",
                r#"{"a":2,"b":"y"}"#,
            ),
            (
                Shapes::Renamed { amount: 9 },
                "MoneyDeposited",
                r#"{"amount":9}"#,
            ),
        ];
        for (event, ty, data) in all {
            let e = encode(&event).unwrap();
            assert_eq!(e.event_type, ty);
            assert_eq!(String::from_utf8(e.data.clone()).unwrap(), data);
            assert_eq!(decode::<Shapes>(ty, &e.data).unwrap(), event);
        }
        let s = encode(&Shapes::Struct { a: 4, b: None }).unwrap();
        assert_eq!((s.schema_version, s.tags), (3, vec!["a:4".to_string()]));
        // Fields the data lacks take their serde defaults.
        assert_eq!(
            decode::<Shapes>("Struct", br#"{"a":1}"#).unwrap(),
            Shapes::Struct { a: 1, b: None }
        );
    }

    #[test]
    fn what_does_not_decode_is_named() {
        let e = decode::<Shapes>("Vanished", b"{}").unwrap_err();
        assert_eq!(e.event_type, "Vanished");
        assert!(e.problem.contains("unknown variant `Vanished`"), "{e}");
        let e = decode::<Shapes>("Struct", br#"{"a":"one"}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("event type 'Struct': invalid type"),
            "{e}"
        );
        let e = decode::<Shapes>("Newtype", b"7 8").unwrap_err();
        assert!(e.problem.contains("trailing characters"), "{e}");
        let e = decode::<Shapes>("Unit", b"{").unwrap_err();
        assert!(e.problem.contains("EOF"), "{e}");
    }

    #[test]
    fn an_event_must_be_an_enum() {
        #[derive(Serialize, Deserialize)]
        struct Plain {
            a: u32,
        }
        impl Event for Plain {}
        let e = encode(&Plain { a: 1 }).unwrap_err();
        assert!(
            e.problem.contains("must serialize as an enum variant"),
            "{e}"
        );
    }
}
