//! The VM subnet and the fixed address each VM gets in it.
//!
//! The bridge (the VMs' gateway) takes the subnet's first host address;
//! VMs get the others. A VM's address is derived from its id (FNV-1a of
//! the id, probed linearly past addresses already taken), so one VM gets
//! the same address whichever order VMs are created in, and the egress
//! module records it so a worker restart keeps it even if the subnet
//! filled up in between.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::NetError;

/// An IPv4 subnet, `a.b.c.d/len` with `len` between 8 and 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: u32,
    len: u8,
}

impl Subnet {
    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The netmask, dotted (`255.255.255.0` for a /24).
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_of(self.len))
    }

    /// The host's address on the bridge: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// How many addresses VMs can get (all hosts but the gateway).
    pub fn vm_capacity(&self) -> u32 {
        (1u32 << (32 - self.len)) - 3
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask_of(self.len) == self.network
    }

    /// `a` is an address a VM may have: inside, not the network, the
    /// gateway or the broadcast address.
    pub fn is_vm_address(&self, a: Ipv4Addr) -> bool {
        let a = u32::from(a);
        let first = self.network + 2;
        a >= first && a < first + self.vm_capacity()
    }

    /// The address for `key` (a VM id) that no one in `taken` has, or
    /// `None` when the subnet is full.
    pub fn allocate(&self, key: &str, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let n = self.vm_capacity();
        let start = fnv1a(key.as_bytes()) % n;
        (0..n)
            .map(|i| Ipv4Addr::from(self.network + 2 + (start + i) % n))
            .find(|a| !taken.contains(a))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

impl FromStr for Subnet {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = |why: &str| NetError::BadSubnet {
            subnet: s.to_owned(),
            why: why.to_owned(),
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| bad("expected a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| bad("the prefix length is not a number"))?;
        if !(8..=30).contains(&len) {
            return Err(bad("the prefix length must be between 8 and 30"));
        }
        let network = u32::from(addr) & mask_of(len);
        if network != u32::from(addr) {
            return Err(bad("host bits are set; give the network address"));
        }
        Ok(Subnet { network, len })
    }
}

fn mask_of(len: u8) -> u32 {
    u32::MAX << (32 - u32::from(len))
}

/// FNV-1a, 32 bits: stable across builds and platforms (std's hasher is
/// not), which the address of a VM must be.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_subnets() {
        let s: Subnet = "10.100.0.0/24".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.vm_capacity(), 253);
        assert_eq!(s.to_string(), "10.100.0.0/24");
        for (bad, why) in [
            ("10.100.0.0", "a.b.c.d/len"),
            ("10.100.0.1/24", "host bits"),
            ("10.100.0.0/31", "between 8 and 30"),
            ("10.300.0.0/24", "not an IPv4"),
            ("10.100.0.0/x", "not a number"),
        ] {
            let e = bad.parse::<Subnet>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn allocation_is_deterministic_collision_free_and_bounded() {
        let s: Subnet = "10.9.0.0/29".parse().unwrap();
        assert_eq!(s.vm_capacity(), 5);
        let mut taken = HashSet::new();
        let a = s.allocate("vm-a", &taken).unwrap();
        assert_eq!(
            s.allocate("vm-a", &taken),
            Some(a),
            "same key, same address"
        );
        for i in 0..5 {
            let next = s.allocate(&format!("k{i}"), &taken).unwrap();
            assert!(s.is_vm_address(next), "{next}");
            assert!(taken.insert(next), "{next} given twice");
        }
        assert_eq!(s.allocate("one-more", &taken), None, "the subnet is full");
        assert!(!s.is_vm_address(s.gateway()));
        assert!(!s.is_vm_address(Ipv4Addr::new(10, 9, 0, 7)), "broadcast");
    }
}
