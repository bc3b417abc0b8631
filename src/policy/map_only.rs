//! `Serialize` and `Deserialize` for [`TimeoutPolicy`] through the derived (`remote`)
//! functions; a policy deserializes from a map only. A struct's derived `Deserialize` also
//! accepts a sequence, by position, so `[0.5, 3.0]` would set `quantile` and `factor`.

use std::fmt;

use serde::de::{value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TimeoutPolicy;

impl Serialize for TimeoutPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TimeoutPolicy::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for TimeoutPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PolicyMap)
    }
}

/// Accepts a map and hands it to the derived deserializer; anything else is refused
/// with serde's "invalid type: ..., expected a map of timeout policy fields".
struct PolicyMap;

impl<'de> Visitor<'de> for PolicyMap {
    type Value = TimeoutPolicy;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of timeout policy fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TimeoutPolicy, A::Error> {
        TimeoutPolicy::deserialize(MapAccessDeserializer::new(map))
    }
}
