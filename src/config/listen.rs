//! [`Listen`]: where a listener listens, or that it is off. Every listener
//! in the config is one: `"ip:port"` or `"off"`.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl Listen {
    /// `Listen::At` of a literal address (for defaults).
    pub fn at(addr: &str) -> Listen {
        Listen::At(addr.parse().expect("a literal socket address"))
    }

    /// The address, None when off.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::At(a) => Some(*a),
        }
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Listen::At(_))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::At(a) => write!(f, "{a}"),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        match s {
            "off" => Ok(Listen::Off),
            _ => s
                .parse()
                .map(Listen::At)
                .map_err(|_| format!("`{s}` is neither \"ip:port\" nor \"off\"")),
        }
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Listen, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_or_an_address() {
        assert_eq!("off".parse::<Listen>(), Ok(Listen::Off));
        let at: Listen = "[::1]:25".parse().unwrap();
        assert_eq!(at.addr().unwrap().port(), 25);
        assert_eq!(at.to_string(), "[::1]:25");
        assert!("localhost:25".parse::<Listen>().is_err());
        assert!("".parse::<Listen>().is_err());
    }
}
