//! The value kinds of a configuration file (durations with units, actions, bounded
//! integers, groups) and their checks, each reporting into the file's [`Report`].

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::report::Report;
use crate::model::{
    rules::Action,
    services::{MAX_IDLE, MIN_IDLE},
    text::{self, NumberError, shown},
};

/// A duration as written: a string with a unit (`"2s"`); numbers are refused with a
/// message that says so.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub(crate) struct DurationText(pub(crate) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. \"2s\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DurationText, E> {
                Ok(DurationText(s.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<DurationText, E> {
                Err(E::custom(format!(
                    "{n} has no unit: write a duration with a unit, e.g. \"{n}s\" or \"{n}ms\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole number as written (a TOML integer): refused in operator words otherwise
/// (not "expected i64").
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub(crate) struct Whole(pub(crate) i64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WholeVisitor).map(Whole)
    }
}

/// Whole numbers of every integer type of the https configuration: the visitor says
/// "a whole number" where serde would say "u32" or "usize".
struct WholeVisitor;

impl serde::de::Visitor<'_> for WholeVisitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number, e.g. 3")
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<i64, E> {
        Ok(n)
    }
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<i64, E> {
        i64::try_from(n).map_err(|_| E::custom(format!("{n} is too large")))
    }
}

/// A count of something (`max_fails`, `retries`, bytes, connections): a whole number
/// of 0 or more that fits `T`, said so in operator words.
pub(crate) fn count<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::{Error, Unexpected};
    let n = d.deserialize_any(WholeVisitor)?;
    if n < 0 {
        return Err(D::Error::invalid_value(
            Unexpected::Signed(n),
            &"a whole number of 0 or more",
        ));
    }
    T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))
}

/// A TOML table read as `T`. serde's derive would also fill a struct from an array's
/// elements by position (`balancer = ["30s"]` read as `[balancer] drain_timeout =
/// "30s"`); a table field goes through this instead (`deserialize_with` one of
/// [`table`], [`table_opt`], [`tables`], [`spanned_table_opt`], [`spanned_tables`]), so
/// anything but a table is refused as one.
struct Table<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = T;
            /// What `T` says it expects (`a [balancer] table (drain_timeout)`): asked of
            /// it with a unit value, which no table type takes.
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                let unit = serde::de::value::UnitDeserializer::<serde::de::value::Error>::new();
                let said = T::deserialize(unit).err().map(|e| e.to_string());
                match said.as_deref().and_then(|e| e.split_once(", expected ")) {
                    Some((_, what)) => f.write_str(what),
                    None => f.write_str("a table"),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(Table)
    }
}

/// A table field (see [`Table`]).
pub(crate) fn table<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Table::deserialize(d).map(|t| t.0)
}

/// An optional table field (with `#[serde(default)]`).
pub(crate) fn table_opt<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    table(d).map(Some)
}

/// An array of tables (`[[name]]`).
pub(crate) fn tables<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Vec::<Table<T>>::deserialize(d).map(|v| v.into_iter().map(|t| t.0).collect())
}

/// An optional table that keeps its span.
pub(crate) fn spanned_table_opt<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Spanned<T>>, D::Error> {
    let s = Spanned::<Table<T>>::deserialize(d)?;
    Ok(Some(Spanned::new(s.span(), s.into_inner().0)))
}

/// An array of tables that keep their spans.
pub(crate) fn spanned_tables<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<Spanned<T>>, D::Error> {
    let v = Vec::<Spanned<Table<T>>>::deserialize(d)?;
    Ok(v.into_iter()
        .map(|s| Spanned::new(s.span(), s.into_inner().0))
        .collect())
}

/// Seconds as the https configuration writes them: a duration with a unit (`"10s"`,
/// `"500ms"`), the file's one duration syntax. A bare number is refused with the
/// spelling to use: "5" could mean seconds or milliseconds, and the rest of the file
/// and the CLI take units only.
pub(crate) fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl V {
        fn bare<E: serde::de::Error>(n: impl fmt::Display) -> Result<f64, E> {
            Err(E::custom(format!(
                "{n} has no unit: durations are written with one, e.g. \"{n}s\" or \"500ms\""
            )))
        }
    }
    impl serde::de::Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration, e.g. \"10s\" or \"500ms\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<f64, E> {
            parse_duration(s)
                .map(|d| d.as_secs_f64())
                .map_err(E::custom)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
            V::bare(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
            V::bare(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
            V::bare(v)
        }
    }
    d.deserialize_any(V)
}

/// Socket addresses (`listen`, a pool's `backends`): each `ADDR:PORT`, said so.
pub(crate) fn socket_addrs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<std::net::SocketAddr>, D::Error> {
    use serde::de::Error;
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|a| {
            a.parse().map_err(|_| {
                D::Error::custom(format!(
                    "'{}' is not ADDR:PORT, e.g. \"192.0.2.1:443\" or \"[2001:db8::1]:443\"",
                    shown(a)
                ))
            })
        })
        .collect()
}

/// Parses `500ms`, `2s`, `5m`, `2h`, `1d`: digits and a unit. A number too large for
/// any duration gives `Duration::MAX`, so the caller's range check names it (a value
/// out of range is not "not a duration").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "'{}' is not a duration: expected a whole number with a unit (ms, s, m, h, d), e.g. \"2s\" or \"500ms\"",
            shown(s)
        )
    };
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match text::number(n, 0..=u64::MAX) {
        Ok(n) => Ok(n
            .checked_mul(ms)
            .map_or(Duration::MAX, Duration::from_millis)),
        Err(NumberError::OutOfRange) => Ok(Duration::MAX),
        Err(NumberError::NotDigits) => Err(bad()),
    }
}

pub(crate) fn action(
    r: &mut Report,
    v: &Option<Spanned<String>>,
    field: &str,
    default: Action,
) -> Action {
    let Some(v) = v else { return default };
    match v.get_ref().as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => {
            r.at(
                v.span(),
                field,
                format!("'{other}' is not an action: expected \"allow\" or \"deny\""),
            );
            default
        }
    }
}

pub(crate) fn int_in(
    r: &mut Report,
    v: &Option<Spanned<Whole>>,
    field: &str,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
) -> Option<i64> {
    let v = v.as_ref()?;
    let n = v.get_ref().0;
    if range.contains(&n) {
        Some(n)
    } else {
        r.at(
            v.span(),
            field,
            format!(
                "{what} {n} is out of range: expected {} to {}",
                range.start(),
                range.end()
            ),
        );
        None
    }
}

pub(crate) fn duration(r: &mut Report, v: &Spanned<DurationText>, field: &str) -> Option<Duration> {
    match parse_duration(&v.get_ref().0) {
        Ok(d) => Some(d),
        Err(e) => {
            r.at(v.span(), field, e);
            None
        }
    }
}

/// An idle timeout in whole seconds (`MIN_IDLE` to `MAX_IDLE`); None when not given
/// or refused (reported).
pub(crate) fn idle(r: &mut Report, v: &Option<Spanned<DurationText>>, field: &str) -> Option<u32> {
    let v = v.as_ref()?;
    let d = duration(r, v, field)?;
    if d.subsec_millis() != 0 || d.as_secs() < MIN_IDLE as u64 || d.as_secs() > MAX_IDLE as u64 {
        r.at(
            v.span(),
            field,
            format!(
                "idle timeout '{}' is out of range: expected whole seconds from {MIN_IDLE}s to {MAX_IDLE}s (7d)",
                v.get_ref().0,
            ),
        );
        return None;
    }
    Some(d.as_secs() as u32)
}

/// The numeric id of a group name (or a number), if it exists.
pub fn group_id(name: &str) -> Result<u32, String> {
    match text::number(name, 0..=u32::MAX as u64 - 1) {
        Ok(n) => return Ok(n as u32),
        Err(NumberError::OutOfRange) => {
            return Err(format!(
                "group id {name} is out of range: expected 0 to {}",
                u32::MAX - 1
            ));
        }
        Err(NumberError::NotDigits) => {}
    }
    let c = std::ffi::CString::new(name)
        .map_err(|_| format!("'{}' is not a group name", shown(name)))?;
    // SAFETY: getgrnam_r writes into the buffers given; a null result means not found.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out);
        if rc == 0 && !out.is_null() {
            return Ok(grp.gr_gid);
        }
    }
    let name = shown(name);
    Err(format!(
        "there is no group '{name}' on this machine: create it (groupadd {name}) or name an existing group"
    ))
}
