use annal_core::{
    AppendRequest, EventStore, EventStoreExt, ExpectedRevision, NewEvent, ReadRequest,
};
use annal_engine::Store;

#[tokio::test]
async fn append_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            let r =
                store
                    .append(AppendRequest::stream(
                        "account-1",
                        if i == 0 {
                            ExpectedRevision::NoStream
                        } else {
                            ExpectedRevision::Exact(i - 1)
                        },
                        vec![NewEvent::new("Deposited", format!("{{\"n\":{i}}}"))
                            .with_tag("account:1")],
                    ))
                    .await
                    .unwrap();
            assert_eq!(r.revision(), i);
        }
        let evs = store
            .read_to_vec(ReadRequest::stream("account-1"))
            .await
            .unwrap();
        assert_eq!(evs.len(), 10);
        store.close().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let evs = store
        .read_to_vec(ReadRequest::all().backward())
        .await
        .unwrap();
    assert_eq!(
        evs.iter().map(|e| e.position).collect::<Vec<_>>(),
        (0..10).rev().collect::<Vec<_>>()
    );
    assert_eq!(store.head().await.unwrap(), Some(9));
}
