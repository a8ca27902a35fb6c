//! Delivery outcomes are values: the one place where a server reply or an
//! I/O failure becomes "delivered", "try again later" or "give up".
//!
//! Owns: [`DeliveryOutcome`], [`from_reply`], [`from_io`], [`from_dns`],
//! [`from_route`].
//!
//! Must not: decide when to retry or bounce (the scheduler does).

use crate::proto::server_reply::ServerReply;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The server took responsibility (2xx after the data).
    Delivered { reply: String },
    /// Try again later: 4xx, timeouts, refused or dropped connections.
    Temporary { reply: String },
    /// Give up and bounce: 5xx, or a message the server can never take.
    Permanent { reply: String, status: String },
}

impl DeliveryOutcome {
    pub fn reply(&self) -> &str {
        match self {
            DeliveryOutcome::Delivered { reply }
            | DeliveryOutcome::Temporary { reply }
            | DeliveryOutcome::Permanent { reply, .. } => reply,
        }
    }

    pub fn permanent(status: &str, text: &str) -> DeliveryOutcome {
        DeliveryOutcome::Permanent {
            reply: format!("{status} {text}"),
            status: status.to_string(),
        }
    }
}

/// The class of a reply decides: 2xx/3xx delivered (the caller only asks at
/// points where that means accepted), 4xx temporary, 5xx permanent.
pub fn from_reply(r: &ServerReply) -> DeliveryOutcome {
    let reply = r.one_line();
    match r.code {
        200..=399 => DeliveryOutcome::Delivered { reply },
        400..=499 => DeliveryOutcome::Temporary { reply },
        _ => {
            let status = r
                .enhanced()
                .map_or_else(|| "5.0.0".to_string(), str::to_string);
            DeliveryOutcome::Permanent { reply, status }
        }
    }
}

/// A failed lookup: permanent when the domain cannot take mail (NXDOMAIN,
/// null MX, no address), temporary otherwise.
pub fn from_dns(e: &crate::dns::DnsError) -> DeliveryOutcome {
    if e.is_permanent() {
        DeliveryOutcome::permanent(e.status(), &e.to_string())
    } else {
        DeliveryOutcome::Temporary {
            reply: e.to_string(),
        }
    }
}

/// No targets: the recipient domain's DNS decides as [`from_dns`]; a
/// configured next hop that does not resolve is always temporary (4.4.3,
/// directory server failure), and its text does not blame the recipient's
/// domain (the bounce classifier reads it).
pub fn from_route(e: &super::route::RouteError) -> DeliveryOutcome {
    match e {
        super::route::RouteError::Domain(dns) => from_dns(dns),
        hop @ super::route::RouteError::NextHop { .. } => DeliveryOutcome::Temporary {
            reply: format!("451 4.4.3 {hop}"),
        },
    }
}

/// Any I/O failure (refused, reset, timeout) is temporary.
pub fn from_io(stage: &str, e: &std::io::Error) -> DeliveryOutcome {
    DeliveryOutcome::Temporary {
        reply: format!("{stage}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> ServerReply {
        ServerReply {
            code,
            lines: vec![text.into()],
        }
    }

    #[test]
    fn classes() {
        assert!(matches!(
            from_reply(&reply(250, "2.0.0 ok")),
            DeliveryOutcome::Delivered { .. }
        ));
        assert!(matches!(
            from_reply(&reply(451, "4.3.0 later")),
            DeliveryOutcome::Temporary { .. }
        ));
        assert_eq!(
            from_reply(&reply(550, "5.1.1 no such user")),
            DeliveryOutcome::Permanent {
                reply: "550 5.1.1 no such user".into(),
                status: "5.1.1".into()
            }
        );
        assert!(matches!(
            from_reply(&reply(554, "rejected")),
            DeliveryOutcome::Permanent { status, .. } if status == "5.0.0"
        ));
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            from_io("connect", &e),
            DeliveryOutcome::Temporary { .. }
        ));
    }
}
