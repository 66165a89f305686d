//! Decisions whose boundary is a tag query: a unique-username rule and a course-capacity rule,
//! each hammered by 16 concurrent handlers, never violated, as the log alone shows
//! afterwards. On the embedded engine and through a client of a server.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use annal_core::{EventStore, EventStoreExt, Query, QueryItem, ReadRequest};
use annal_cqrs::{decode_recorded, CommandError, CommandHandler, Context, Decision, Event, Retry};
use serde::{Deserialize, Serialize};

both_ways!(
    a_username_is_claimed_once_whoever_races_for_it,
    a_course_never_takes_more_than_its_capacity,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Registration {
    UsernameClaimed { username: String, by: u32 },
    StudentSubscribed { course: String, student: u32 },
}

impl Event for Registration {
    fn tags(&self) -> Vec<String> {
        match self {
            Registration::UsernameClaimed { username, .. } => vec![format!("username:{username}")],
            Registration::StudentSubscribed { course, student } => {
                vec![format!("course:{course}"), format!("student:{student}")]
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Refused {
    #[error("the username is taken")]
    Taken,
    #[error("the course is full")]
    Full,
}

struct ClaimUsername;

impl Decision for ClaimUsername {
    type State = bool;
    type Command = (String, u32);
    type Event = Registration;
    type Error = Refused;

    fn query((username, _): &(String, u32)) -> Query {
        Query::item(
            QueryItem::types(["UsernameClaimed"]).with_tags([format!("username:{username}")]),
        )
    }

    fn decide(taken: &bool, (username, by): &(String, u32)) -> Result<Vec<Registration>, Refused> {
        if *taken {
            return Err(Refused::Taken);
        }
        Ok(vec![Registration::UsernameClaimed {
            username: username.clone(),
            by: *by,
        }])
    }

    fn evolve(_: bool, _: &Registration) -> bool {
        true
    }
}

const CAPACITY: usize = 30;

struct Subscribe;

impl Decision for Subscribe {
    /// Students subscribed so far.
    type State = usize;
    type Command = (String, u32);
    type Event = Registration;
    type Error = Refused;

    fn query((course, _): &(String, u32)) -> Query {
        Query::item(QueryItem::types(["StudentSubscribed"]).with_tags([format!("course:{course}")]))
    }

    fn decide(
        count: &usize,
        (course, student): &(String, u32),
    ) -> Result<Vec<Registration>, Refused> {
        if *count >= CAPACITY {
            return Err(Refused::Full);
        }
        Ok(vec![Registration::StudentSubscribed {
            course: course.clone(),
            student: *student,
        }])
    }

    fn evolve(count: usize, _: &Registration) -> usize {
        count + 1
    }
}

fn patient<S: EventStore>(store: S) -> CommandHandler<S> {
    CommandHandler::new(store).with_retry(Retry {
        attempts: 500,
        first_pause: Duration::from_millis(1),
        max_pause: Duration::from_millis(10),
    })
}

async fn registrations<S: EventStore>(store: &S) -> Vec<Registration> {
    let all = store.read_to_vec(ReadRequest::all()).await.unwrap();
    let mut out = Vec::new();
    for e in &all {
        assert_eq!(e.in_stream(), None, "decisions write events of no stream");
        out.extend(decode_recorded::<Registration>(e, &Default::default()).unwrap());
    }
    out
}

async fn a_username_is_claimed_once_whoever_races_for_it<S: EventStore + Clone + 'static>(
    store: S,
) {
    let names = ["ann", "bob", "cy", "dee"];
    let mut tasks = Vec::new();
    for by in 0..16u32 {
        let h = patient(store.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for name in names {
                let r = h
                    .decide::<ClaimUsername>(&(name.to_string(), by), &Context::new())
                    .await;
                outcomes.push((name, r));
            }
            outcomes
        }));
    }
    let mut won = BTreeMap::new();
    for t in tasks {
        for (name, r) in t.await.unwrap() {
            match r {
                Ok(done) => {
                    assert_eq!((done.written, done.stream_id.as_str()), (1, ""));
                    *won.entry(name).or_insert(0) += 1;
                }
                Err(CommandError::Rejected(Refused::Taken)) => {}
                Err(e) => panic!("{name}: {e:?}"),
            }
        }
    }
    assert_eq!(won, names.iter().map(|n| (*n, 1)).collect());
    // From the log alone: one claim per name.
    let mut claims = BTreeMap::new();
    for r in registrations(&store).await {
        if let Registration::UsernameClaimed { username, .. } = r {
            *claims.entry(username).or_insert(0) += 1;
        }
    }
    assert_eq!(claims, names.iter().map(|n| (n.to_string(), 1)).collect());
    // Each claim is found by its tag.
    let ann = store
        .read_to_vec(ReadRequest::query(Query::item(QueryItem::tags([
            "username:ann",
        ]))))
        .await
        .unwrap();
    assert_eq!(ann.len(), 1);
}

async fn a_course_never_takes_more_than_its_capacity<S: EventStore + Clone + 'static>(store: S) {
    let mut tasks = Vec::new();
    for handler in 0..16u32 {
        let h = patient(store.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..3 {
                let student = handler * 3 + i;
                for course in ["c1", "c2"] {
                    let r = h
                        .decide::<Subscribe>(&(course.to_string(), student), &Context::new())
                        .await;
                    outcomes.push((course, r));
                }
            }
            outcomes
        }));
    }
    let mut admitted = BTreeMap::new();
    for t in tasks {
        for (course, r) in t.await.unwrap() {
            match r {
                Ok(_) => *admitted.entry(course).or_insert(0) += 1,
                Err(CommandError::Rejected(Refused::Full)) => {}
                Err(e) => panic!("{course}: {e:?}"),
            }
        }
    }
    assert_eq!(admitted, [("c1", CAPACITY), ("c2", CAPACITY)].into());
    let mut seated: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in registrations(&store).await {
        if let Registration::StudentSubscribed { course, student } = r {
            seated.entry(course).or_default().push(student);
        }
    }
    for (course, mut students) in seated.clone() {
        assert_eq!(students.len(), CAPACITY, "{course}");
        students.sort_unstable();
        students.dedup();
        assert_eq!(students.len(), CAPACITY, "{course}: a student seated twice");
    }
    assert_eq!(seated.len(), 2);
}
