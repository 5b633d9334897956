//! Evidence: what every colony answer carries (see `shared/design/evidence.md`): who it speaks
//! for, who produced it, when it was last confirmed, how long it may be relied on, what it is
//! bound to, and how fresh it is.

use crate::duration::format_go_duration;
use crate::hlc::HlcTimestamp;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The freshness class a client can reason with, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "class")]
pub enum Freshness {
    /// Confirmed now (a leader read, a check result younger than its lifetime).
    Fresh,
    /// Confirmed `age_ms` ago and guaranteed no older than `bound_ms`.
    BoundedStale {
        /// How old the evidence is, in milliseconds.
        age_ms: u64,
        /// The most it can be, in milliseconds.
        bound_ms: u64,
    },
    /// From gossip or a cache with no bound.
    Eventual,
    /// An immutable fact at a past revision.
    Historical,
}

impl Freshness {
    /// The class name used on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Freshness::Fresh => "fresh",
            Freshness::BoundedStale { .. } => "bounded-stale",
            Freshness::Eventual => "eventual",
            Freshness::Historical => "historical",
        }
    }
}

/// How long evidence may be relied on from its `observed` time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifetime {
    /// A duration in milliseconds (a check interval, a TTL).
    Ms(u64),
    /// Until the store moves past this index.
    UntilIndex(u64),
    /// Never changes.
    Immutable,
}

impl Lifetime {
    /// The lifetime as written on the wire (`10s`, `until-index:1042`, `immutable`).
    pub fn to_wire(&self) -> String {
        match self {
            Lifetime::Ms(ms) => format_go_duration(*ms),
            Lifetime::UntilIndex(index) => format!("until-index:{index}"),
            Lifetime::Immutable => "immutable".to_string(),
        }
    }
}

/// The evidence attached to one answer, or to one item of a list answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Who the evidence speaks for: `node:web-1`, `cluster`.
    pub scope: String,
    /// Who produced this answer: `leader`, `follower`, `agent`, `gossip`.
    pub source: String,
    /// When it was last confirmed.
    pub observed: HlcTimestamp,
    /// The node whose clock stamped `observed`.
    pub observed_by: String,
    /// How long it may be relied on from `observed`.
    pub lifetime: Lifetime,
    /// What it proves, precisely enough to re-check: `log:index=42`, `check:web-1:http`.
    pub binding: String,
    /// The class a client can reason with.
    pub freshness: Freshness,
}

impl Evidence {
    /// Renders the evidence as an RFC 8941 structured-field dictionary, the value of the
    /// `X-Colony-Evidence` header.
    pub fn to_header_value(&self) -> String {
        // Written in place (every answer carries one): no intermediate strings.
        let mut out = String::with_capacity(192);
        out.push_str("scope=");
        push_sf_string(&mut out, &self.scope);
        out.push_str(", source=");
        push_sf_string(&mut out, &self.source);
        out.push_str(", freshness=");
        push_sf_string(&mut out, self.freshness.name());
        let _ = write!(out, ", observed=\"{}@", self.observed);
        push_sf_escaped(&mut out, &self.observed_by);
        out.push_str("\", lifetime=");
        match self.lifetime {
            Lifetime::Ms(ms) => push_sf_string(&mut out, &format_go_duration(ms)),
            Lifetime::UntilIndex(index) => {
                let _ = write!(out, "\"until-index:{index}\"");
            }
            Lifetime::Immutable => out.push_str("\"immutable\""),
        }
        out.push_str(", binding=");
        push_sf_string(&mut out, &self.binding);
        if let Freshness::BoundedStale { age_ms, bound_ms } = self.freshness {
            let _ = write!(out, ", age={age_ms}, bound={bound_ms}");
        }
        out
    }

    /// Renders the evidence as a JSON object for native answers and per-item evidence.
    pub fn to_json_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("scope", self.scope.clone()),
            ("source", self.source.clone()),
            ("freshness", self.freshness.name().to_string()),
            (
                "observed",
                format!("{}@{}", self.observed, self.observed_by),
            ),
            ("lifetime", self.lifetime.to_wire()),
            ("binding", self.binding.clone()),
        ];
        if let Freshness::BoundedStale { age_ms, bound_ms } = self.freshness {
            fields.push(("age", age_ms.to_string()));
            fields.push(("bound", bound_ms.to_string()));
        }
        fields
    }
}

/// Appends `text` as the inside of an RFC 8941 string: printable ASCII only (anything else
/// dropped), with `"` and `\\` escaped.
fn push_sf_escaped(out: &mut String, text: &str) {
    let plain = text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.push_str(text);
        return;
    }
    for c in text.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends `text` as an RFC 8941 string, quotes included.
fn push_sf_string(out: &mut String, text: &str) {
    out.push('"');
    push_sf_escaped(out, text);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(freshness: Freshness) -> Evidence {
        Evidence {
            scope: "cluster".into(),
            source: "leader".into(),
            observed: HlcTimestamp {
                physical_ms: 1764031200123,
                logical: 4,
            },
            observed_by: "srv-1".into(),
            lifetime: Lifetime::UntilIndex(1042),
            binding: "log:index=1042".into(),
            freshness,
        }
    }

    #[test]
    fn evidence_header_fresh_is_sf_dictionary() {
        let header = sample(Freshness::Fresh).to_header_value();
        assert_eq!(
            header,
            "scope=\"cluster\", source=\"leader\", freshness=\"fresh\", \
             observed=\"1764031200123.4@srv-1\", lifetime=\"until-index:1042\", \
             binding=\"log:index=1042\""
        );
    }

    #[test]
    fn evidence_header_bounded_stale_carries_age_and_bound() {
        let header = sample(Freshness::BoundedStale {
            age_ms: 120,
            bound_ms: 500,
        })
        .to_header_value();
        assert!(header.contains("freshness=\"bounded-stale\""));
        assert!(header.ends_with(", age=120, bound=500"));
    }

    #[test]
    fn evidence_header_writes_every_lifetime_as_its_wire_form() {
        for lifetime in [
            Lifetime::Ms(1_500),
            Lifetime::UntilIndex(1042),
            Lifetime::Immutable,
        ] {
            let mut evidence = sample(Freshness::Fresh);
            evidence.lifetime = lifetime.clone();
            let expected = format!(", lifetime=\"{}\", binding=", lifetime.to_wire());
            assert!(
                evidence.to_header_value().contains(&expected),
                "{lifetime:?}: {}",
                evidence.to_header_value()
            );
        }
    }

    #[test]
    fn evidence_header_escapes_quotes_and_drops_control_chars() {
        let mut evidence = sample(Freshness::Fresh);
        evidence.scope = "node:a\"b\n".into();
        assert!(
            evidence
                .to_header_value()
                .starts_with("scope=\"node:a\\\"b\"")
        );
    }
}
