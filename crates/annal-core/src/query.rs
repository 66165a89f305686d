/// A Dynamic Consistency Boundary query: an OR of items.
///
/// An event matches an item when its type is one of the item's types (or the item names no
/// types) and it carries every one of the item's tags. An item with neither types nor tags
/// matches every event ([`Query::all`]).
///
/// A query with **no items** is invalid: reads and append conditions reject it with
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) rather than guess whether it means
/// "nothing" or "everything". Use [`Query::all`] to match every event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub items: Vec<QueryItem>,
}

/// One alternative of a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryItem {
    /// The event types that match; empty means any type.
    pub types: Vec<String>,
    /// Tags the event must all carry; empty means no tag is required.
    pub tags: Vec<String>,
}

impl Query {
    /// Matches every event.
    pub fn all() -> Self {
        Query {
            items: vec![QueryItem::default()],
        }
    }

    /// A query of one item.
    pub fn item(item: QueryItem) -> Self {
        Query { items: vec![item] }
    }

    /// Adds an alternative.
    pub fn or(mut self, item: QueryItem) -> Self {
        self.items.push(item);
        self
    }

    /// True when an event with this type and these tags matches.
    pub fn matches<T: AsRef<str>>(&self, event_type: &str, tags: &[T]) -> bool {
        self.items.iter().any(|i| i.matches(event_type, tags))
    }
}

impl QueryItem {
    /// Matches events of any of these types.
    pub fn types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        QueryItem {
            types: types.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
        }
    }

    /// Matches events that carry all of these tags.
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(tags: I) -> Self {
        QueryItem {
            types: Vec::new(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// Adds required tags.
    pub fn with_tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// True when an event with this type and these tags matches.
    pub fn matches<T: AsRef<str>>(&self, event_type: &str, tags: &[T]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self
                .tags
                .iter()
                .all(|t| tags.iter().any(|have| have.as_ref() == t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn item_needs_one_type_and_all_tags() {
        let item = QueryItem::types(["A", "B"]).with_tags(["x", "y"]);
        assert!(item.matches("A", &tags(&["y", "x", "z"])));
        assert!(!item.matches("A", &tags(&["x"])));
        assert!(!item.matches("C", &tags(&["x", "y"])));
        assert!(QueryItem::default().matches::<String>("anything", &[]));
    }

    #[test]
    fn query_is_an_or_of_items() {
        let q = Query::item(QueryItem::types(["A"])).or(QueryItem::tags(["t"]));
        let none: &[String] = &[];
        assert!(q.matches("A", none));
        assert!(q.matches("B", &tags(&["t"])));
        assert!(!q.matches("B", none));
        assert!(!Query::default().matches("A", none));
        assert!(Query::all().matches("A", none));
    }
}
