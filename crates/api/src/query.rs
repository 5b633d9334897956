//! Query-string parsing with Consul's conventions: bare flags (`?recurse`), repeated keys
//! (`?tag=a&tag=b`), and the blocking-query parameters.

use crate::error::ApiError;
use colony_base::parse_go_duration_ms;

/// Consul's default blocking wait.
pub const WAIT_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// Consul's longest blocking wait.
pub const WAIT_MS_MAX: u64 = 10 * 60 * 1000;

/// A parsed query string.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        Query { pairs }
    }

    /// Whether the parameter is present (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    /// The first value of the parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a boolean-ish flag is set: present with no value, or `true`/`1`.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
    }

    /// A boolean parameter parsed as Go's `strconv.ParseBool` does (Consul's parser): `1`,
    /// `t`, `T`, `TRUE`, `true`, `True` and their false counterparts.
    ///
    /// # Errors
    /// 400 naming the parameter for any other spelling.
    pub fn go_bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(Some(true)),
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid value for {name}: {other:?} is not a boolean"
            ))),
        }
    }

    /// An unsigned integer parameter.
    ///
    /// # Errors
    /// 400 naming the parameter if the value is not a number.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("Invalid {name} value {text:?}: must be a number"))
            }),
        }
    }

    /// The blocking-query options (`?index`, `?wait`).
    ///
    /// # Errors
    /// 400 for a non-numeric index or an invalid wait duration.
    pub fn blocking(&self) -> Result<Blocking, ApiError> {
        let index = self.u64("index")?.unwrap_or(0);
        let wait_ms = match self.get("wait") {
            None | Some("") => WAIT_MS_DEFAULT,
            Some(text) => parse_go_duration_ms(text)
                .map_err(|e| ApiError::bad_request(format!("Invalid wait time: {e}")))?
                .min(WAIT_MS_MAX),
        };
        Ok(Blocking { index, wait_ms })
    }

    /// Checks `?dc`: this agent serves exactly one datacenter.
    ///
    /// # Errors
    /// 500 "No path to datacenter", as Consul answers an unknown datacenter.
    pub fn check_datacenter(&self, datacenter: &str) -> Result<(), ApiError> {
        match self.get("dc") {
            Some(dc) if !dc.is_empty() && dc != datacenter => {
                Err(ApiError::internal(format!("No path to datacenter {dc:?}")))
            }
            _ => Ok(()),
        }
    }
}

/// Blocking-query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Answer once the result's index is greater than this (0: answer at once).
    pub index: u64,
    /// The longest wait, ms.
    pub wait_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bare_flags_and_repeats() {
        let query = Query::parse(Some("recurse&tag=a&tag=b&raw=false&cas=0"));
        assert!(query.flag("recurse"));
        assert!(!query.flag("raw"));
        assert_eq!(query.all("tag"), vec!["a", "b"]);
        assert_eq!(query.u64("cas").expect("number"), Some(0));
    }

    #[test]
    fn query_go_bool_accepts_go_spellings() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            let query = Query::parse(Some(&format!("enable={text}")));
            assert_eq!(
                query.go_bool("enable").expect("valid"),
                Some(true),
                "{text}"
            );
        }
        assert_eq!(
            Query::parse(Some("enable=False"))
                .go_bool("enable")
                .expect("ok"),
            Some(false)
        );
        assert!(Query::parse(Some("enable=yes")).go_bool("enable").is_err());
    }

    #[test]
    fn query_bad_numbers_and_waits_are_400() {
        assert!(Query::parse(Some("cas=abc")).u64("cas").is_err());
        assert!(Query::parse(Some("wait=banana")).blocking().is_err());
        let capped = Query::parse(Some("index=5&wait=1h"))
            .blocking()
            .expect("valid");
        assert_eq!(
            capped,
            Blocking {
                index: 5,
                wait_ms: WAIT_MS_MAX
            }
        );
    }
}
