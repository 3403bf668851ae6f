//! Outbound HTTP to URLs that users name: one place that decides where this server may
//! connect, so that a URL a tenant sends cannot make the server call itself or the
//! network behind it.
//!
//! - [`AllowList`] is `SWARM_HTTP_ALLOWLIST`, parsed once at start. A URL is allowed when
//!   its scheme, host and port equal an entry's exactly, and its path is the entry's path
//!   or below it on a segment boundary (`/api` allows `/api` and `/api/x`, not `/apix`).
//!   URLs are parsed as browsers do (the `url` crate, WHATWG), so every spelling of an
//!   address (`http://2130706433/`, `http://0x7f.1/`, `http://127.1/`) is the one address
//!   it means; a user name or password, and an encoded `/` or `\` in the path, are refused.
//! - **Addresses.** The host is resolved, and every address it resolves to must be public:
//!   loopback, private (RFC 1918), link-local, unspecified, CGNAT (100.64/10), unique local
//!   (fc00::/7), multicast, documentation and reserved ranges, and the cloud metadata
//!   addresses (169.254.169.254, fd00:ec2::254) are refused, unless the entry names that
//!   address explicitly (`http://10.0.0.5:8080`, `http://[::1]:9000`), or is `localhost`,
//!   which names loopback explicitly. A host name on the list that resolves to a
//!   non-public address is refused: list the address of an internal service instead.
//! - **Pinning.** The connection goes to the address that was checked ([`pinned_client`]
//!   overrides DNS for the host), never through a proxy and never following a redirect, so
//!   a DNS answer that changes between the check and the connection changes nothing.
//! - [`Origin`] is a fixed upstream (`LEGACY_BACKEND_URL`): [`Origin::join`] builds a URL
//!   under it and refuses one that would leave its scheme, host, port or path prefix.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// Why a URL is refused. The text completes a sentence that starts with the URL or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("is not a valid URL ({0})")]
    Malformed(String),
    #[error("must be an http or https URL")]
    Scheme,
    #[error("must not carry a user name or password")]
    Userinfo,
    #[error("must not contain an encoded slash or backslash in its path")]
    EncodedSeparator,
    #[error("is not on this server's allow-list (SWARM_HTTP_ALLOWLIST)")]
    NotListed,
    #[error("leaves the configured origin or path prefix")]
    OffOrigin,
    #[error("leads to {0}, an address that is not public and not named on the allow-list")]
    Forbidden(IpAddr),
    #[error("has a host that could not be resolved ({0})")]
    Unresolved(String),
}

/// One allow-list entry: scheme, host and port exact, path a prefix on segment boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    scheme: String,
    host: Host<String>,
    port: u16,
    /// Without a trailing `/` (empty: every path).
    path: String,
}

impl Entry {
    fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{text}` must be an http or https URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("`{text}` must not carry a user name or password"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("`{text}` must not have a query or fragment"));
        }
        let host = url
            .host()
            .ok_or_else(|| format!("`{text}` has no host"))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("`{text}` has no port"))?;
        if encoded_separator(url.path()) {
            return Err(format!("`{text}` has an encoded slash in its path"));
        }
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host,
            port,
            path: url.path().trim_end_matches('/').to_owned(),
        })
    }

    fn matches(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.host().map(|h| h.to_owned()).as_ref() == Some(&self.host)
            && url.port_or_known_default() == Some(self.port)
            && under(url.path(), &self.path)
    }

    /// Whether a connection to `ip` is allowed for this entry: a public address, or the
    /// address the entry names, or loopback for `localhost`.
    fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match &self.host {
            Host::Ipv4(named) => ip == IpAddr::V4(*named) || is_public(ip),
            Host::Ipv6(named) => ip == canonical(IpAddr::V6(*named)) || is_public(ip),
            Host::Domain(name) if name == "localhost" => ip.is_loopback() || is_public(ip),
            Host::Domain(_) => is_public(ip),
        }
    }
}

/// Whether `path` is `prefix` or below it (`prefix` has no trailing `/`).
fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// An encoded `/` or `\` that the far end might decode into a separator.
fn encoded_separator(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

/// The URLs users may have this server call (`SWARM_HTTP_ALLOWLIST`).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<Entry>,
}

/// A URL that passed every check, and the addresses its connection may go to (every one
/// of them checked).
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub addrs: Vec<SocketAddr>,
}

impl AllowList {
    /// Parses a comma-separated list of URLs (empty: nothing is allowed). A malformed entry
    /// is an error, so that a typo does not silently allow something else.
    pub fn parse(list: &str) -> Result<Self, String> {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(Entry::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Everything that can be told without resolving: the URL parses, has no user info
    /// nor encoded separator, matches an entry, and if its host is an address, that address
    /// is allowed. Returns the URL and its entry.
    fn matching(&self, raw: &str) -> Result<(Url, &Entry), Refusal> {
        let url = Url::parse(raw.trim()).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal::Scheme);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Userinfo);
        }
        if url.host().is_none() {
            return Err(Refusal::Malformed("no host".into()));
        }
        if encoded_separator(url.path()) {
            return Err(Refusal::EncodedSeparator);
        }
        let entry = self
            .entries
            .iter()
            .find(|e| e.matches(&url))
            .ok_or(Refusal::NotListed)?;
        if let Some(ip) = literal(&url) {
            if !entry.admits(ip) {
                return Err(Refusal::Forbidden(ip));
            }
        }
        Ok((url, entry))
    }

    /// The checks that need no network (for admission of a request): see [`Self::resolve`]
    /// for the whole check.
    pub fn check(&self, raw: &str) -> Result<Url, Refusal> {
        self.matching(raw).map(|(url, _)| url)
    }

    /// The whole check: [`Self::check`], then the host's addresses, every one of which
    /// must be allowed. The target's addresses are the ones to connect to
    /// ([`pinned_client`]).
    pub async fn resolve(&self, raw: &str) -> Result<Target, Refusal> {
        let (url, entry) = self.matching(raw)?;
        let port = url.port_or_known_default().ok_or(Refusal::Scheme)?;
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(Host::Domain(name)) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| Refusal::Unresolved(e.to_string()))?
                .collect(),
            None => return Err(Refusal::Malformed("no host".into())),
        };
        if let Some(bad) = addrs.iter().find(|a| !entry.admits(a.ip())) {
            return Err(Refusal::Forbidden(bad.ip()));
        }
        if addrs.is_empty() {
            return Err(Refusal::Unresolved("no address".into()));
        }
        Ok(Target { url, addrs })
    }
}

/// The address of a URL whose host is an IP literal.
fn literal(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        Host::Domain(_) => None,
    }
}

/// A client that connects to `target.addrs` whatever DNS says of the host, with no proxy
/// and no redirects, and a time limit per request.
pub fn pinned_client(target: &Target, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(Host::Domain(name)) = target.url.host() {
        builder = builder.resolve_to_addrs(name, &target.addrs);
    }
    builder.build()
}

/// An IPv4 address carried in an IPv6 one (mapped or compatible) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The cloud instance metadata addresses.
pub fn is_metadata(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4 == Ipv4Addr::new(169, 254, 169, 254),
        IpAddr::V6(v6) => v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    }
}

/// A globally routable unicast address: none of loopback, private, link-local,
/// unspecified, CGNAT, unique local, multicast, documentation, benchmarking, reserved or
/// metadata addresses, nor an IPv6 form of one (mapped, compatible, NAT64, 6to4, Teredo).
pub fn is_public(ip: IpAddr) -> bool {
    if is_metadata(ip) {
        return false;
    }
    match canonical(ip) {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254) // link-local, metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated), NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
    // reach an IPv4 address: that address decides.
    let embedded = |hi: u16, lo: u16| {
        public_v4(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ))
    };
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return embedded(s[6], s[7]);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return embedded(s[6], s[7]);
    }
    if s[0] == 0x2002 {
        return embedded(s[1], s[2]);
    }
    // Global unicast is 2000::/3; within it, Teredo (2001::/32), documentation
    // (2001:db8::/32) and ORCHID/benchmarking (2001:2::/48, 2001:10::/28) are not public.
    (s[0] & 0xe000) == 0x2000
        && !(s[0] == 0x2001 && (s[1] == 0 || s[1] == 0xdb8 || s[1] == 2 || (s[1] & 0xfff0) == 0x10))
}

/// A fixed upstream origin and path prefix (`LEGACY_BACKEND_URL`).
#[derive(Debug, Clone)]
pub struct Origin {
    base: Url,
    /// The base's path without a trailing `/`.
    prefix: String,
}

impl Origin {
    pub fn parse(text: &str) -> Result<Self, String> {
        let entry = Entry::parse(text.trim())?;
        let base = Url::parse(text.trim()).map_err(|e| e.to_string())?;
        Ok(Self {
            base,
            prefix: entry.path,
        })
    }

    /// `path` (relative to the base's path) and `query` under this origin. Whatever the
    /// path holds (`//host/x`, `@host`, `../`, encoded separators), the result keeps the
    /// origin's scheme, host and port and stays below its path prefix, or is refused.
    pub fn join(&self, path: &str, query: &str) -> Result<Url, Refusal> {
        let mut url = self.base.clone();
        url.set_path(&format!("{}/{}", self.prefix, path.trim_start_matches('/')));
        url.set_query((!query.is_empty()).then_some(query));
        url.set_fragment(None);
        if encoded_separator(url.path()) {
            return Err(Refusal::EncodedSeparator);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Userinfo);
        }
        let same_origin = url.scheme() == self.base.scheme()
            && url.host() == self.base.host()
            && url.port_or_known_default() == self.base.port_or_known_default();
        if !same_origin || !under(url.path(), &self.prefix) {
            return Err(Refusal::OffOrigin);
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> AllowList {
        AllowList::parse(s).unwrap()
    }

    #[test]
    fn user_info_is_refused_whatever_it_spells() {
        let l = list("http://localhost:8080");
        for url in [
            "http://localhost:8080@127.0.0.1:8000/metrics",
            "http://user@localhost:8080/",
            "http://user:pw@localhost:8080/",
            "http://:pw@localhost:8080/",
        ] {
            assert_eq!(l.check(url), Err(Refusal::Userinfo), "{url}");
        }
        assert!(l.check("http://localhost:8080/x").is_ok());
    }

    #[test]
    fn scheme_host_and_port_are_compared_exactly() {
        let l = list("http://localhost:8080, https://api.example.com/v1");
        assert_eq!(l.check("http://localhost:8081/"), Err(Refusal::NotListed));
        assert_eq!(l.check("http://localhost/"), Err(Refusal::NotListed));
        assert_eq!(l.check("https://localhost:8080/"), Err(Refusal::NotListed));
        assert_eq!(
            l.check("http://localhost.evil.com:8080/"),
            Err(Refusal::NotListed)
        );
        assert_eq!(
            l.check("http://api.example.com/v1"),
            Err(Refusal::NotListed)
        );
        assert_eq!(
            l.check("https://api.example.com.evil.com/v1"),
            Err(Refusal::NotListed)
        );
        // The default port is the same port written or not; host case does not matter.
        assert!(l.check("https://API.example.com:443/v1/x").is_ok());
        assert!(l.check("HTTP://LOCALHOST:8080").is_ok());
        assert_eq!(l.check("ftp://localhost:8080/"), Err(Refusal::Scheme));
        assert!(matches!(l.check("not a url"), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn the_path_is_a_prefix_on_segment_boundaries() {
        let l = list("https://api.example.com/api");
        assert!(l.check("https://api.example.com/api").is_ok());
        assert!(l.check("https://api.example.com/api/").is_ok());
        assert!(l.check("https://api.example.com/api/x?y=1").is_ok());
        assert_eq!(
            l.check("https://api.example.com/apix"),
            Err(Refusal::NotListed)
        );
        assert_eq!(
            l.check("https://api.example.com/api/../admin"),
            Err(Refusal::NotListed)
        );
        assert_eq!(
            l.check("https://api.example.com/api/%2e%2e/admin"),
            Err(Refusal::NotListed)
        );
        assert_eq!(
            l.check("https://api.example.com/api/..%2fadmin"),
            Err(Refusal::EncodedSeparator)
        );
        assert_eq!(
            l.check("https://api.example.com/api/..%5Cadmin"),
            Err(Refusal::EncodedSeparator)
        );
        // A trailing slash in the entry means the same prefix.
        let l = list("https://api.example.com/api/");
        assert!(l.check("https://api.example.com/api").is_ok());
        assert_eq!(
            l.check("https://api.example.com/apix"),
            Err(Refusal::NotListed)
        );
    }

    #[test]
    fn every_spelling_of_an_address_is_that_address() {
        // Loopback listed by name does not let its numeric spellings in, nor the reverse.
        let l = list("http://localhost, http://203.0.113.9:80");
        for url in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0/",
        ] {
            assert_eq!(l.check(url), Err(Refusal::NotListed), "{url}");
        }
        // An address entry matches however the address is written...
        let l = list("http://127.0.0.1:9000");
        for url in [
            "http://2130706433:9000/",
            "http://0x7f.1:9000/",
            "http://127.1:9000/x",
        ] {
            assert!(l.check(url).is_ok(), "{url}");
        }
        // ...and only that address.
        assert_eq!(l.check("http://127.0.0.2:9000/"), Err(Refusal::NotListed));
        let l = list("http://[::1]:9000");
        assert!(l.check("http://[0:0:0:0:0:0:0:1]:9000/").is_ok());
    }

    #[test]
    fn non_public_addresses_are_refused_unless_named() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_public(ip), "{ip}");
        }
        assert!(is_metadata("169.254.169.254".parse().unwrap()));
        assert!(is_metadata("fd00:ec2::254".parse().unwrap()));

        // A host name entry admits public addresses only; an address entry its address;
        // `localhost` loopback.
        let named = Entry::parse("http://svc.example.com").unwrap();
        assert!(!named.admits("10.0.0.5".parse().unwrap()));
        assert!(!named.admits("127.0.0.1".parse().unwrap()));
        assert!(!named.admits("169.254.169.254".parse().unwrap()));
        assert!(named.admits("93.184.216.34".parse().unwrap()));
        let address = Entry::parse("http://10.0.0.5:8080").unwrap();
        assert!(address.admits("10.0.0.5".parse().unwrap()));
        assert!(address.admits("::ffff:10.0.0.5".parse().unwrap()));
        assert!(!address.admits("10.0.0.6".parse().unwrap()));
        let local = Entry::parse("http://localhost:8080").unwrap();
        assert!(local.admits("127.0.0.1".parse().unwrap()));
        assert!(local.admits("::1".parse().unwrap()));
        assert!(!local.admits("10.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn resolution_refuses_a_name_that_leads_inside_and_pins_an_address() {
        // `localhost` resolves to loopback: allowed only because the entry names it.
        let target = list("http://localhost:9")
            .resolve("http://localhost:9/x")
            .await
            .unwrap();
        assert!(!target.addrs.is_empty());
        assert!(target
            .addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9));
        // An address entry needs no resolution.
        let target = list("http://127.0.0.1:9")
            .resolve("http://127.1:9/")
            .await
            .unwrap();
        assert_eq!(target.addrs, vec!["127.0.0.1:9".parse().unwrap()]);
        assert!(pinned_client(&target, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn bad_entries_are_refused_at_start() {
        assert!(AllowList::parse("").unwrap().is_empty());
        assert!(AllowList::parse(" , ").unwrap().is_empty());
        for bad in [
            "localhost:8080",
            "ftp://x",
            "http://u@x",
            "http://x/?q",
            "http://x/#f",
            "http://x/a%2fb",
        ] {
            assert!(AllowList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_joined_path_stays_on_the_origin_and_under_its_prefix() {
        let o = Origin::parse("http://legacy.internal:3000").unwrap();
        let url = o.join("api/openai", "a=1").unwrap();
        assert_eq!(url.as_str(), "http://legacy.internal:3000/api/openai?a=1");
        for path in [
            "//evil.com/x",
            "@evil.com/x",
            "/@evil.com/x",
            "\\\\evil.com/x",
            "http://evil.com/x",
        ] {
            let url = o.join(path, "").unwrap();
            assert_eq!(url.host_str(), Some("legacy.internal"), "{path} → {url}");
            assert_eq!(url.port(), Some(3000), "{path} → {url}");
        }
        // A query cannot end the URL early nor carry a fragment.
        let url = o.join("api/x", "a=1#@evil.com").unwrap();
        assert_eq!(url.host_str(), Some("legacy.internal"));
        assert!(url.fragment().is_none());
        assert_eq!(
            o.join("/..%2f..%2fadmin", ""),
            Err(Refusal::EncodedSeparator)
        );

        let o = Origin::parse("http://legacy.internal:3000/app/").unwrap();
        assert_eq!(
            o.join("api/getAnalysis", "").unwrap().as_str(),
            "http://legacy.internal:3000/app/api/getAnalysis"
        );
        assert_eq!(o.join("../admin", ""), Err(Refusal::OffOrigin));
        assert_eq!(o.join("api/%2e%2e/%2e%2e/x", ""), Err(Refusal::OffOrigin));
        assert!(Origin::parse("legacy:3000").is_err());
        assert!(Origin::parse("http://user:pw@legacy:3000").is_err());
    }
}
