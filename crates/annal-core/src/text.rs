use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Text shared by reference counting: cloning it copies no bytes.
///
/// Events carry their names in it, so that the events of one stream read from the log share
/// one copy of their stream id, and events of one type share their type. It reads as a
/// `str` (it derefs to one) and compares with `str` and `String`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Arc<str>);

impl Text {
    pub fn new(s: &str) -> Text {
        Text(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when both share one buffer.
    pub fn ptr_eq(a: &Text, b: &Text) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
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
        Text(Arc::from(s))
    }
}

impl From<&Text> for Text {
    fn from(s: &Text) -> Text {
        s.clone()
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Text {
        Text(s)
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0.to_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        **self == *other.0
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

    fn keep(&mut self, t: Text) -> Text {
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
