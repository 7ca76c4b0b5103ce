//! The controller's state store: one suite, run against a real etcd (started here on free
//! loopback ports) and against the embedded redb store.

use std::time::Duration;

use ferry_controller::state::{
    Compare, EmbeddedStore, EtcdStore, Event, Op, Store, StoreError, Txn, MAX_VALUE,
};
use ferry_tests::Etcd;

async fn next(w: &mut ferry_controller::state::Watch) -> Event {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an event within 5 s")
        .expect("watch open")
        .expect("event")
}

/// Everything the controller relies on, for any store.
async fn suite(s: &Store) {
    // get / put / revisions.
    assert_eq!(s.get("plans/p1").await.expect("get"), None);
    let r1 = s.put("plans/p1", b"one").await.expect("put");
    let kv = s.get("plans/p1").await.expect("get").expect("present");
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.mod_revision, r1);
    let r2 = s.put("plans/p1", b"two").await.expect("put");
    assert!(r2 > r1, "revisions grow: {r1} then {r2}");
    assert_eq!(s.revision().await.expect("revision"), r2);

    // list by prefix: in key order, nothing outside the prefix.
    for k in ["plans/p3", "plans/p2", "plansx", "runs/r1", "plan"] {
        s.put(k, k.as_bytes()).await.expect("put");
    }
    let keys: Vec<String> = s
        .list("plans/")
        .await
        .expect("list")
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["plans/p1", "plans/p2", "plans/p3"]);
    assert!(s.list("nothing/").await.expect("list").is_empty());

    // Many gets at once, in order, more than one transaction's worth, missing keys as None.
    let mut keys: Vec<String> = (0..150).map(|i| format!("many/{i}")).collect();
    for k in keys.iter().step_by(2) {
        s.put(k, k.as_bytes()).await.expect("put");
    }
    keys.push("plans/p1".into());
    let got = s.get_many(&keys).await.expect("get_many");
    assert_eq!(got.len(), keys.len());
    for (i, (k, v)) in keys.iter().zip(&got).enumerate().take(150) {
        match v {
            Some(kv) => assert!(i % 2 == 0 && kv.key == *k && kv.value == k.as_bytes()),
            None => assert!(i % 2 == 1, "{k} missing"),
        }
    }
    assert_eq!(
        got[150].as_ref().map(|kv| kv.value.clone()),
        Some(b"two".to_vec())
    );
    assert!(matches!(
        s.get_many(&["ok".into(), String::new()]).await,
        Err(StoreError::BadKey(_))
    ));

    // delete.
    assert!(s.delete("plans/p3").await.expect("delete"));
    assert!(!s.delete("plans/p3").await.expect("delete again"));
    assert_eq!(s.get("plans/p3").await.expect("get"), None);

    // compare-and-swap: create only if absent, update only at the revision read.
    let create = |k: &str| Txn {
        when: vec![Compare::Absent(k.into())],
        then: vec![Op::Put(k.into(), b"created".to_vec())],
    };
    assert!(s.txn(create("locks/a")).await.expect("txn").succeeded);
    let lost = s.txn(create("locks/a")).await.expect("txn");
    assert!(!lost.succeeded, "a second create must lose");
    let cur = s.get("locks/a").await.expect("get").expect("present");
    let stale = Txn {
        when: vec![Compare::ModRevision("locks/a".into(), cur.mod_revision - 1)],
        then: vec![Op::Put("locks/a".into(), b"stale".to_vec())],
    };
    assert!(!s.txn(stale).await.expect("txn").succeeded);
    let fresh = Txn {
        when: vec![Compare::ModRevision("locks/a".into(), cur.mod_revision)],
        then: vec![
            Op::Put("locks/a".into(), b"fresh".to_vec()),
            Op::Put("locks/b".into(), b"with it".to_vec()),
            Op::Delete("plans/p2".into()),
        ],
    };
    let done = s.txn(fresh).await.expect("txn");
    assert!(done.succeeded);
    // All writes of one transaction share one revision.
    let a = s.get("locks/a").await.expect("get").expect("a");
    let b = s.get("locks/b").await.expect("get").expect("b");
    assert_eq!(
        (a.value.as_slice(), a.mod_revision, b.mod_revision),
        (&b"fresh"[..], done.revision, done.revision)
    );
    assert_eq!(s.get("plans/p2").await.expect("get"), None);

    // Racing creates: exactly one of many wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let t = Txn {
                when: vec![Compare::Absent("race".into())],
                then: vec![Op::Put("race".into(), format!("{i}").into_bytes())],
            };
            s.txn(t).await.expect("txn").succeeded
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task"));
    }
    assert_eq!(winners, 1);

    // Watch: from now on, then from a past revision; only the prefix, in order.
    let mut w = s.watch("runs/", 0).await.expect("watch");
    // Let the watch be registered before writing (etcd creates it asynchronously).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let p1 = s.put("runs/r2", b"started").await.expect("put");
    s.put("plans/other", b"x").await.expect("put");
    let p2 = s.put("runs/r2", b"done").await.expect("put");
    s.delete("runs/r1").await.expect("delete");
    match next(&mut w).await {
        Event::Put(kv) => assert_eq!(
            (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
            ("runs/r2", &b"started"[..], p1)
        ),
        e => panic!("unexpected {e:?}"),
    }
    match next(&mut w).await {
        Event::Put(kv) => assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"done"[..], p2)),
        e => panic!("unexpected {e:?}"),
    }
    match next(&mut w).await {
        Event::Delete { key, .. } => assert_eq!(key, "runs/r1"),
        e => panic!("unexpected {e:?}"),
    }
    // A watch that starts at p1 sees what came after it.
    let mut past = s.watch("runs/", p1).await.expect("watch from the past");
    match next(&mut past).await {
        Event::Put(kv) => assert_eq!(kv.mod_revision, p2),
        e => panic!("unexpected {e:?}"),
    }

    // A prefix larger than one etcd response (its client takes 4 MiB at most) lists whole,
    // and pages of it follow the keys in order.
    let big = vec![b'r'; 2000];
    let mut ops = Vec::new();
    for i in 0..3000 {
        ops.push(Op::Put(format!("big/k{i:05}"), big.clone()));
        if ops.len() == 50 {
            let txn = Txn {
                when: vec![],
                then: std::mem::take(&mut ops),
            };
            s.txn(txn).await.expect("batch");
        }
    }
    let all = s.list("big/").await.expect("list of 6 MB");
    assert_eq!(all.len(), 3000);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    let (first, more) = s.list_page("big/", None, 1000).await.expect("page");
    assert_eq!((first.len(), more), (1000, true));
    let after = first.last().map(|kv| kv.key.clone());
    let (second, _) = s
        .list_page("big/", after.as_deref(), 1000)
        .await
        .expect("page");
    assert_eq!(second[0].key, "big/k01000");
    let (last, more) = s
        .list_page("big/", Some("big/k02500"), 1000)
        .await
        .expect("page");
    assert_eq!((last.len(), more), (499, false));

    // Bad input is refused before it reaches the store.
    assert!(matches!(s.put("", b"x").await, Err(StoreError::BadKey(_))));
    assert!(matches!(
        s.put("k", &vec![0; MAX_VALUE + 1]).await,
        Err(StoreError::TooLarge(_))
    ));
    assert!(matches!(s.get("a\nb").await, Err(StoreError::BadKey(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let s = Store::Embedded(EmbeddedStore::open(&path).expect("open"));
    suite(&s).await;
    // Durable: everything is there after reopening.
    let rev = s.revision().await.expect("revision");
    let before = s.list("").await;
    assert!(before.is_err(), "an empty prefix is not a key");
    let all = s.list("l").await.expect("list");
    drop(s);
    let s = Store::Embedded(EmbeddedStore::open(&path).expect("reopen"));
    assert_eq!(s.revision().await.expect("revision"), rev);
    assert_eq!(s.list("l").await.expect("list"), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Store::Etcd(
        EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .expect("connect"),
    );
    suite(&s).await;
}

/// A store that is gone gives errors, not hangs or panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_gone_is_an_error() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let s = Store::Etcd(
        EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .expect("connect"),
    );
    s.put("k", b"v").await.expect("put");
    etcd.kill();
    let r = tokio::time::timeout(Duration::from_secs(30), s.get("k"))
        .await
        .expect("an answer, not a hang");
    assert!(matches!(r, Err(StoreError::Etcd(_))), "{r:?}");
}
