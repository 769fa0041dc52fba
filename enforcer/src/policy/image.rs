//! The compiled policy: exactly the entries every kernel map will hold, plus the names
//! that turn numeric ids back into words for audit records, `explain` and `status`.

use enforcer_common::maps::{
    FailsafeKey4, FailsafeKey6, ListenKey, PolicyConfig, RuleKey, RuleValue, SegmentInfo,
};

/// One entry of an LPM trie: the key's data, how many leading bits must match, the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LpmEntry<K, V> {
    /// Number of leading key bits that must match.
    pub prefix_len: u32,
    /// The key data (bits past `prefix_len` are zero).
    pub key: K,
    /// The value.
    pub value: V,
}

/// Everything one policy generation puts into the kernel. Built by
/// [`super::compile::compile`]; every list is sorted, so equal policies give equal images
/// and equal [`MapImage::digest`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapImage {
    /// The config array's single entry.
    pub config: PolicyConfig,
    /// Segment names by id: `*`, `host`, `world`, then the named segments in name order.
    pub segment_names: Vec<String>,
    /// Segment flags by id.
    pub segment_infos: Vec<SegmentInfo>,
    /// IPv4 address trie: address prefix to segment id.
    pub cidrs_v4: Vec<LpmEntry<[u8; 4], u32>>,
    /// IPv6 address trie: address prefix to segment id.
    pub cidrs_v6: Vec<LpmEntry<[u8; 16], u32>>,
    /// cgroup paths (relative to the cgroup2 root) to segment id; the agent resolves them
    /// to cgroup ids when it applies the image.
    pub cgroups: Vec<(String, u32)>,
    /// Declared listener ports to segment id.
    pub listen_ports: Vec<(ListenKey, u32)>,
    /// The rule trie.
    pub rules: Vec<LpmEntry<RuleKey, RuleValue>>,
    /// Rule ids (names) by numeric id minus one.
    pub rule_names: Vec<String>,
    /// IPv4 failsafe trie; values are failsafe numbers (index + 1 into `failsafe_names`).
    pub failsafes_v4: Vec<LpmEntry<FailsafeKey4, u32>>,
    /// IPv6 failsafe trie.
    pub failsafes_v6: Vec<LpmEntry<FailsafeKey6, u32>>,
    /// Failsafe names by number minus one.
    pub failsafe_names: Vec<String>,
}

/// The bytes of a `repr(C)` map type without padding, as the kernel stores it.
fn pod_bytes<T: aya::Pod>(value: &T) -> &[u8] {
    // SAFETY: `Pod` types are `repr(C)` plain data whose padding is explicit (their
    // layouts are asserted in enforcer-common), so all `size_of::<T>()` bytes are
    // initialised and may be read as `u8`.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
}

impl MapImage {
    /// SHA-256 over a canonical encoding of every entry and name: the identity of this
    /// generation in bundles, `status` and audit records.
    pub fn digest(&self) -> [u8; 32] {
        let mut feed = Vec::new();
        let section = |out: &mut Vec<u8>, name: &str, count: usize| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(count as u64).to_le_bytes());
        };
        section(&mut feed, "config", 1);
        feed.extend_from_slice(pod_bytes(&self.config));
        let strings = |out: &mut Vec<u8>, list: &[String]| {
            for s in list {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        };
        section(&mut feed, "segments", self.segment_names.len());
        strings(&mut feed, &self.segment_names);
        for info in &self.segment_infos {
            feed.extend_from_slice(pod_bytes(info));
        }
        section(
            &mut feed,
            "cidrs",
            self.cidrs_v4.len() + self.cidrs_v6.len(),
        );
        for e in &self.cidrs_v4 {
            feed.extend_from_slice(&e.prefix_len.to_le_bytes());
            feed.extend_from_slice(&e.key);
            feed.extend_from_slice(&e.value.to_le_bytes());
        }
        for e in &self.cidrs_v6 {
            feed.extend_from_slice(&e.prefix_len.to_le_bytes());
            feed.extend_from_slice(&e.key);
            feed.extend_from_slice(&e.value.to_le_bytes());
        }
        section(&mut feed, "cgroups", self.cgroups.len());
        for (path, id) in &self.cgroups {
            strings(&mut feed, std::slice::from_ref(path));
            feed.extend_from_slice(&id.to_le_bytes());
        }
        section(&mut feed, "listen", self.listen_ports.len());
        for (key, id) in &self.listen_ports {
            feed.extend_from_slice(pod_bytes(key));
            feed.extend_from_slice(&id.to_le_bytes());
        }
        section(&mut feed, "rules", self.rules.len());
        for e in &self.rules {
            feed.extend_from_slice(&e.prefix_len.to_le_bytes());
            feed.extend_from_slice(pod_bytes(&e.key));
            feed.extend_from_slice(pod_bytes(&e.value));
        }
        strings(&mut feed, &self.rule_names);
        section(
            &mut feed,
            "failsafes",
            self.failsafes_v4.len() + self.failsafes_v6.len(),
        );
        for e in &self.failsafes_v4 {
            feed.extend_from_slice(&e.prefix_len.to_le_bytes());
            feed.extend_from_slice(pod_bytes(&e.key));
            feed.extend_from_slice(&e.value.to_le_bytes());
        }
        for e in &self.failsafes_v6 {
            feed.extend_from_slice(&e.prefix_len.to_le_bytes());
            feed.extend_from_slice(pod_bytes(&e.key));
            feed.extend_from_slice(&e.value.to_le_bytes());
        }
        strings(&mut feed, &self.failsafe_names);
        crate::digest::sha256(&feed)
    }

    /// [`MapImage::digest`] as lowercase hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }

    /// The id of segment `name`, if the image has it.
    pub fn segment_id(&self, name: &str) -> Option<u32> {
        self.segment_names
            .iter()
            .position(|n| n == name)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The name of segment `id`.
    pub fn segment_name(&self, id: u32) -> &str {
        self.segment_names
            .get(id as usize)
            .map_or("?", String::as_str)
    }

    /// The name of rule `rule_id` (1-based).
    pub fn rule_name(&self, rule_id: u32) -> &str {
        (rule_id as usize)
            .checked_sub(1)
            .and_then(|i| self.rule_names.get(i))
            .map_or("?", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::{compile_sources, source::SourceSet};

    /// The digest names a generation in bundles signed by one release and verified by
    /// another, so its encoding may not drift: this policy's digest is fixed. A change
    /// here is a change of the bundle format.
    #[test]
    fn the_digest_of_a_known_policy_is_stable() {
        let mut sources = SourceSet::default();
        sources.add(
            "known.toml",
            r#"
[segments.api]
cidrs = ["198.18.1.0/24", "198.18.2.0/24", "2001:db8:1::/48"]

[segments.db]
cidrs = ["198.18.7.0/24"]
ports = ["5432/tcp"]

[[allow]]
id = "api-to-db"
from = ["api"]
to = ["db"]
ports = ["5432/tcp"]

[failsafe.ssh]
from = ["198.18.9.0/24"]
port = "22/tcp"
"#
            .to_owned(),
        );
        let compiled = compile_sources(sources).expect("compiles");
        assert_eq!(
            compiled.image.digest_hex(),
            "50d6bde8f25298350db7924497d534c70d02c540015453f5b491c58313638829"
        );
    }
}
