//! Admission: how many connections a listener holds on one shard, in all
//! and per client address, so that one client cannot take every place.
//!
//! Owns: [`Admission`] (the counts of one listener on one shard) and
//! [`ConnSlot`] (a connection's place, given back when it is dropped, also
//! when its task is cancelled). Lives on one shard (`Rc`, `RefCell`): the
//! limits it enforces are the shard's share of the global ones
//! (`shard::share`), so shards never talk about them.
//!
//! Must not: read or write the connection; the listener decides what a
//! refused client gets (a 421, a 503, or nothing).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

/// The counts of one listener on one shard.
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    /// A gauge of the connections open, if the listener keeps one.
    gauge: Option<&'static str>,
    open: RefCell<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The listener holds its limit of connections.
    Total,
    /// This client address holds its limit.
    PerAddress,
}

impl Full {
    pub fn as_str(self) -> &'static str {
        match self {
            Full::Total => "limit",
            Full::PerAddress => "per_address_limit",
        }
    }
}

/// A connection's place; dropping it gives the place back.
pub struct ConnSlot {
    admission: Rc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize, gauge: Option<&'static str>) -> Rc<Admission> {
        Rc::new(Admission {
            max_total,
            max_per_ip,
            gauge,
            open: RefCell::default(),
        })
    }

    /// A place for a connection from `ip`, if the limits leave one.
    pub fn admit(self: &Rc<Self>, ip: IpAddr) -> Result<ConnSlot, Full> {
        let mut open = self.open.borrow_mut();
        if open.total >= self.max_total {
            return Err(Full::Total);
        }
        let from_ip = open.per_ip.entry(ip).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(Full::PerAddress);
        }
        *from_ip += 1;
        open.total += 1;
        if let Some(gauge) = self.gauge {
            ::metrics::gauge!(gauge).increment(1.0);
        }
        Ok(ConnSlot {
            admission: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.borrow().total
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(gauge) = self.admission.gauge {
            ::metrics::gauge!(gauge).decrement(1.0);
        }
        let mut open = self.admission.open.borrow_mut();
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_place_and_places_come_back() {
        let admission = Admission::new(3, 2, None);
        let (a, b) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2]));
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Full::PerAddress));
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).err(), Some(Full::Total));
        drop(first);
        assert_eq!(admission.open(), 2);
        assert!(admission.admit(a).is_ok());
    }
}
