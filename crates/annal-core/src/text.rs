use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Text shared by reference counting (or kept for the life of the process, for a few
/// names): cloning it copies no bytes.
///
/// Events carry their names in it, so that the events of one stream read from the log share
/// one copy of their stream id, and events of one type share their type. It reads as a
/// `str` (it derefs to one) and compares with `str` and `String`.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    /// A name kept for the life of the process (see [`Text::interned`]): cloning and
    /// dropping it cost nothing.
    Static(&'static str),
    Shared(Arc<str>),
}

impl Default for Text {
    fn default() -> Text {
        Text(Repr::Static(""))
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Text) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Text) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

/// Names kept for the life of the process, and their bytes.
struct Interned {
    names: std::collections::HashSet<&'static str>,
    bytes: usize,
}

/// At most this many bytes of names are kept for the life of the process; names beyond
/// are shared by reference counting like any text.
const INTERNED_BYTES: usize = 1 << 20;
/// Names longer than this are not kept.
const INTERNED_NAME: usize = 128;

static INTERNED: std::sync::RwLock<Option<Interned>> = std::sync::RwLock::new(None);

impl Text {
    pub fn new(s: &str) -> Text {
        Text(Repr::Shared(Arc::from(s)))
    }

    /// `s` kept for the life of the process, for names that few values take and many
    /// events carry (event types, content types): its clones cost nothing. Once the names
    /// kept so far fill their bound, a new one is an ordinary shared text.
    pub fn interned(s: &str) -> Text {
        if s.len() > INTERNED_NAME {
            return Text::new(s);
        }
        // Names are read far more often than added: look under the shared lock first.
        let found = INTERNED
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|kept| kept.names.get(s).copied());
        if let Some(name) = found {
            return Text(Repr::Static(name));
        }
        let mut guard = INTERNED.write().unwrap_or_else(|e| e.into_inner());
        let kept = guard.get_or_insert_with(|| Interned {
            names: std::collections::HashSet::new(),
            bytes: 0,
        });
        if let Some(&name) = kept.names.get(s) {
            return Text(Repr::Static(name));
        }
        if kept.bytes + s.len() > INTERNED_BYTES {
            return Text::new(s);
        }
        let name: &'static str = Box::leak(s.to_owned().into_boxed_str());
        kept.bytes += s.len();
        kept.names.insert(name);
        Text(Repr::Static(name))
    }

    /// A text of a string that lives for the whole program.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Repr::Static(s))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }

    /// True when both share one buffer.
    pub fn ptr_eq(a: &Text, b: &Text) -> bool {
        std::ptr::eq(a.as_str().as_ptr(), b.as_str().as_ptr()) && a.len() == b.len()
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Repr::Shared(Arc::from(s)))
    }
}

impl From<&Text> for Text {
    fn from(s: &Text) -> Text {
        s.clone()
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Text {
        Text(Repr::Shared(s))
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.as_str().to_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

/// The texts made while decoding one message or record, so that a name that repeats (a
/// stream id, an event type, a tag) is one [`Text`] shared by every event that carries it.
#[derive(Default)]
pub struct TextCache {
    /// The most recent distinct texts, newest last.
    recent: Vec<Text>,
}

impl TextCache {
    /// Most texts kept: the names of one batch are few.
    const KEEP: usize = 8;

    /// `s` as a shared [`Text`].
    pub fn text(&mut self, s: &str) -> Text {
        if let Some(t) = self.recent.iter().rev().find(|t| t.as_str() == s) {
            return t.clone();
        }
        self.keep(Text::from(s))
    }

    /// `s` as a shared [`Text`], taking its allocation when it is new.
    pub fn string(&mut self, s: String) -> Text {
        if let Some(t) = self.recent.iter().rev().find(|t| t.as_str() == s) {
            return t.clone();
        }
        self.keep(Text::from(s))
    }

    /// The text kept whose bytes are `bytes`, if any.
    pub fn find(&self, bytes: &[u8]) -> Option<Text> {
        self.recent
            .iter()
            .rev()
            .find(|t| t.as_bytes() == bytes)
            .cloned()
    }

    /// Keeps `t` as the newest text, forgetting the oldest past the bound.
    pub fn keep(&mut self, t: Text) -> Text {
        if self.recent.len() == Self::KEEP {
            self.recent.remove(0);
        }
        self.recent.push(t.clone());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_their_bytes_and_compare_as_text() {
        let a = Text::from("account-1".to_string());
        let b = a.clone();
        assert!(Text::ptr_eq(&a, &b));
        assert_eq!(a, "account-1");
        assert_eq!("account-1", a);
        assert_eq!(a, "account-1".to_string());
        assert_eq!(a.len(), 9);
        assert!(a.starts_with("account"));
        assert_eq!(format!("{a} {a:?}"), "account-1 \"account-1\"");
        let (x, y) = (Text::from("a"), Text::from("b"));
        assert!(x < y);
        assert_eq!(String::from(a), "account-1");
    }

    #[test]
    fn interned_names_are_kept_once_and_within_their_bound() {
        let a = Text::interned("Deposited");
        let b = Text::interned(String::from("Deposited").as_str());
        assert!(Text::ptr_eq(&a, &b));
        assert!(matches!(a.0, Repr::Static(_)));
        assert_eq!(a, Text::new("Deposited"));
        let long = "x".repeat(INTERNED_NAME + 1);
        assert!(matches!(Text::interned(&long).0, Repr::Shared(_)));
        // Past the bound, names are shared texts like any other.
        let kept = (0..=INTERNED_BYTES / INTERNED_NAME + 1)
            .take_while(|i| {
                let name = format!("{i:0>width$}", width = INTERNED_NAME);
                matches!(Text::interned(&name).0, Repr::Static(_))
            })
            .count();
        assert!(kept <= INTERNED_BYTES / INTERNED_NAME, "{kept} names kept");
        let after = format!("{:0>width$}", "after", width = INTERNED_NAME);
        assert!(matches!(Text::interned(&after).0, Repr::Shared(_)));
        assert!(matches!(Text::interned("Deposited").0, Repr::Static(_)));
    }

    #[test]
    fn a_cache_gives_one_text_for_a_name_that_repeats() {
        let mut cache = TextCache::default();
        let a = cache.text("Deposited");
        let b = cache.string("Withdrawn".to_string());
        assert!(Text::ptr_eq(&a, &cache.string("Deposited".to_string())));
        assert!(Text::ptr_eq(&b, &cache.text("Withdrawn")));
        for i in 0..20 {
            cache.text(&format!("t{i}"));
        }
        assert!(!Text::ptr_eq(&a, &cache.text("Deposited")), "forgotten");
    }
}
