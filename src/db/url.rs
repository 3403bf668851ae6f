//! `DATABASE_URL` with several hosts, as libpq reads it:
//! `postgres://user:pass@h1:5432,[::1]:5433,h3/db?target_session_attrs=read-write`.
//!
//! sqlx reads one host only, so the host list is cut out here and every other part of the
//! URL (user, password, database, TLS and the other parameters) is read by sqlx once, then
//! given each host in turn.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;

/// The server a session must land on (libpq's `target_session_attrs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The first server that accepts the connection (libpq's default).
    Any,
    /// A server that takes writes: `transaction_read_only` is off.
    ReadWrite,
    /// A server that refuses writes (a standby, or read-only by default).
    ReadOnly,
    /// A server that is not in recovery.
    Primary,
    /// A server in recovery.
    Standby,
    /// A standby if any answers, else any server.
    PreferStandby,
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "any" => Target::Any,
            "read-write" => Target::ReadWrite,
            "read-only" => Target::ReadOnly,
            "primary" => Target::Primary,
            "standby" => Target::Standby,
            "prefer-standby" => Target::PreferStandby,
            other => bail!(
                "target_session_attrs={other} is not one of any, read-write, read-only, \
                 primary, standby, prefer-standby"
            ),
        })
    }
}

impl Target {
    /// Whether a server in this state fits; `strict` is false on the second pass of
    /// `prefer-standby`, where any server does.
    pub fn accepts(self, in_recovery: bool, read_only: bool, strict: bool) -> bool {
        match self {
            Target::Any => true,
            Target::ReadWrite => !read_only,
            Target::ReadOnly => read_only,
            Target::Primary => !in_recovery,
            Target::Standby => in_recovery,
            Target::PreferStandby => in_recovery || !strict,
        }
    }
}

/// One host of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// No host in the URL: where the other parameters (`host=`, `PGHOST`) point.
    Default,
    Tcp {
        host: String,
        port: Option<u16>,
    },
    /// A Unix socket directory (a host starting with `/`, percent-encoded in the URL).
    Socket {
        dir: String,
        port: Option<u16>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let port = |p: &Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        match self {
            Endpoint::Default => f.write_str("(default host)"),
            Endpoint::Tcp { host, port: p } if host.contains(':') => {
                write!(f, "[{host}]{}", port(p))
            }
            Endpoint::Tcp { host, port: p } => write!(f, "{host}{}", port(p)),
            Endpoint::Socket { dir, port: p } => write!(f, "{dir}{}", port(p)),
        }
    }
}

/// A parsed `DATABASE_URL`: its hosts in order, the session it asks for, and the options
/// every host shares.
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    hosts: Vec<Endpoint>,
    target: Target,
    connect_timeout: Option<Duration>,
    base: PgConnectOptions,
}

/// Parameters this module reads; sqlx would only warn about them.
const OWN_PARAMS: [&str; 3] = [
    "target_session_attrs",
    "connect_timeout",
    "load_balance_hosts",
];

impl DatabaseUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("DATABASE_URL is not a PostgreSQL URL (postgres://…)");
        };
        if scheme != "postgres" && scheme != "postgresql" {
            bail!("DATABASE_URL is not a PostgreSQL URL: the scheme is {scheme}, not postgres");
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let mut hosts = Vec::new();
        for spec in hostlist.split(',') {
            hosts.push(parse_host(spec).with_context(|| format!("DATABASE_URL host {spec:?}"))?);
        }
        // Our own parameters out of the query; the rest is sqlx's to read.
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, q),
            None => (tail, ""),
        };
        let mut target = Target::Any;
        let mut connect_timeout = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "target_session_attrs" => target = decode(v)?.parse()?,
                "connect_timeout" => {
                    let secs: u64 = decode(v)?
                        .parse()
                        .context("connect_timeout is not a number of seconds")?;
                    connect_timeout = (secs > 0).then(|| Duration::from_secs(secs.max(2)));
                }
                k if OWN_PARAMS.contains(&k) => {}
                _ => kept.push(pair),
            }
        }
        let mut single = format!("postgres://{userinfo}placeholder{path}");
        if !kept.is_empty() {
            single.push('?');
            single.push_str(&kept.join("&"));
        }
        let mut base =
            PgConnectOptions::from_str(&single).context("DATABASE_URL is not a PostgreSQL URL")?;
        if hosts == [Endpoint::Default] {
            // No host given: back to what sqlx makes of the rest (`host=`, `PGHOST`).
            let without = single.replacen("placeholder", "", 1);
            base = PgConnectOptions::from_str(&without)
                .context("DATABASE_URL is not a PostgreSQL URL")?;
        }
        Ok(Self {
            hosts,
            target,
            connect_timeout,
            base,
        })
    }

    pub fn hosts(&self) -> &[Endpoint] {
        &self.hosts
    }

    pub fn target(&self) -> Target {
        self.target
    }

    /// libpq's `connect_timeout` when the URL has one (at least 2 s, as libpq).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// The same URL for another database on the same servers.
    pub fn with_database(&self, database: &str) -> Self {
        let mut other = self.clone();
        other.base = other.base.database(database);
        other
    }

    pub fn database(&self) -> Option<&str> {
        self.base.get_database()
    }

    /// The connect options of the `i`-th host.
    pub fn options(&self, i: usize) -> PgConnectOptions {
        let base = self.base.clone();
        match &self.hosts[i] {
            Endpoint::Default => base,
            Endpoint::Tcp { host, port } => {
                let o = base.host(host);
                match port {
                    Some(p) => o.port(*p),
                    None => o,
                }
            }
            Endpoint::Socket { dir, port } => {
                let o = base.socket(dir);
                match port {
                    Some(p) => o.port(*p),
                    None => o,
                }
            }
        }
    }
}

/// Percent-decoding (`%2F` → `/`) of a host or parameter.
fn decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .with_context(|| format!("a bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("not UTF-8 once percent-decoded")
}

fn parse_host(spec: &str) -> anyhow::Result<Endpoint> {
    if spec.is_empty() {
        return Ok(Endpoint::Default);
    }
    let (host, port) = if let Some(inner) = spec.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            bail!("an IPv6 address without its closing ]");
        };
        addr.parse::<std::net::Ipv6Addr>()
            .context("not an IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').context("text after the IPv6 address")?),
        };
        (addr.to_owned(), port)
    } else {
        match spec.split_once(':') {
            Some((h, p)) => (decode(h)?, Some(p)),
            None => (decode(spec)?, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => bail!("port {p:?} is not a number from 1 to 65535"),
            Ok(p) => Some(p),
        },
    };
    if host.is_empty() {
        return Ok(match port {
            None => Endpoint::Default,
            Some(_) => Endpoint::Tcp {
                host: "localhost".into(),
                port,
            },
        });
    }
    Ok(if host.starts_with('/') {
        Endpoint::Socket { dir: host, port }
    } else {
        Endpoint::Tcp { host, port }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: Option<u16>) -> Endpoint {
        Endpoint::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn several_hosts_with_and_without_ports() {
        let u = DatabaseUrl::parse(
            "postgres://app:secret@db1:5432,db2:5433,db3/shop?target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(
            u.hosts(),
            &[
                tcp("db1", Some(5432)),
                tcp("db2", Some(5433)),
                tcp("db3", None)
            ]
        );
        assert_eq!(u.target(), Target::ReadWrite);
        let o = u.options(1);
        assert_eq!((o.get_host(), o.get_port()), ("db2", 5433));
        assert_eq!(o.get_username(), "app");
        assert_eq!(o.get_database(), Some("shop"));
        // A host without a port gets the default one.
        assert_eq!(
            u.options(2).get_port(),
            PgConnectOptions::new_without_pgpass().get_port()
        );
    }

    #[test]
    fn ipv6_hosts_in_brackets() {
        let u = DatabaseUrl::parse("postgresql://[::1]:6001,[fe80::1%25eth0]:6002,[2001:db8::2]/d")
            .err();
        // A zone id is not an IPv6 address the standard library reads: refused clearly.
        assert!(u.is_some());
        let u = DatabaseUrl::parse(
            "postgresql://[::1]:6001,[2001:db8::2]/d?target_session_attrs=primary",
        )
        .unwrap();
        assert_eq!(
            u.hosts(),
            &[tcp("::1", Some(6001)), tcp("2001:db8::2", None)]
        );
        assert_eq!(u.options(0).get_host(), "::1");
        assert_eq!(u.target(), Target::Primary);
        assert_eq!(u.hosts()[0].to_string(), "[::1]:6001");
    }

    #[test]
    fn percent_encoding_in_credentials_and_hosts() {
        let u = DatabaseUrl::parse(
            "postgres://us%40er:p%2Fa%3Ass@%2Fvar%2Frun%2Fpostgresql:5433,h%2Dtwo/my%20db",
        )
        .unwrap();
        assert_eq!(
            u.hosts(),
            &[
                Endpoint::Socket {
                    dir: "/var/run/postgresql".into(),
                    port: Some(5433)
                },
                tcp("h-two", None)
            ]
        );
        let o = u.options(1);
        assert_eq!(o.get_username(), "us@er");
        assert_eq!(o.get_database(), Some("my db"));
        assert_eq!(
            u.options(0)
                .get_socket()
                .map(|p| p.to_string_lossy().into_owned()),
            Some("/var/run/postgresql".to_owned())
        );
    }

    #[test]
    fn other_query_parameters_are_kept() {
        let u = DatabaseUrl::parse(
            "postgres://a@h1,h2/db?sslmode=disable&target_session_attrs=any&application_name=ub&connect_timeout=1&options=-c%20search_path%3Dx",
        )
        .unwrap();
        assert_eq!(u.target(), Target::Any);
        // libpq's floor of two seconds.
        assert_eq!(u.connect_timeout(), Some(Duration::from_secs(2)));
        let o = u.options(0);
        assert_eq!(o.get_application_name(), Some("ub"));
        assert!(matches!(
            o.get_ssl_mode(),
            sqlx::postgres::PgSslMode::Disable
        ));
        assert_eq!(o.get_options(), Some("-c search_path=x"));
        assert_eq!(o.get_host(), "h1");
    }

    #[test]
    fn one_host_and_no_host() {
        let u = DatabaseUrl::parse("postgres://postgres@127.0.0.1:5432/universal_backend").unwrap();
        assert_eq!(u.hosts(), &[tcp("127.0.0.1", Some(5432))]);
        assert_eq!(u.target(), Target::Any);
        let u = DatabaseUrl::parse("postgres:///db?host=/tmp&port=6000").unwrap();
        assert_eq!(u.hosts(), &[Endpoint::Default]);
        let o = u.options(0);
        assert_eq!(o.get_port(), 6000);
        assert_eq!(o.get_database(), Some("db"));
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for bad in [
            "mysql://h/db",
            "postgres://h1:99999,h2/db",
            "postgres://h1:abc/db",
            "postgres://[::1/db",
            "postgres://h1,h2/db?target_session_attrs=writable",
            "postgres://h1/db?connect_timeout=soon",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn targets_accept_the_servers_they_name() {
        // (in recovery, read only)
        let primary = (false, false);
        let standby = (true, true);
        let read_only_primary = (false, true);
        let ok = |t: Target, (r, ro): (bool, bool)| t.accepts(r, ro, true);
        assert!(ok(Target::ReadWrite, primary));
        assert!(!ok(Target::ReadWrite, standby));
        assert!(!ok(Target::ReadWrite, read_only_primary));
        assert!(ok(Target::Primary, read_only_primary));
        assert!(!ok(Target::Primary, standby));
        assert!(ok(Target::Standby, standby));
        assert!(ok(Target::ReadOnly, read_only_primary));
        assert!(!ok(Target::PreferStandby, primary));
        assert!(Target::PreferStandby.accepts(false, false, false));
        assert!(ok(Target::Any, standby));
    }
}
