//! Torn tails: a crash mid-append leaves a partial last record. Recovery
//! keeps exactly the complete records, moves the cut bytes to
//! `quarantine/`, truncates the file, and a second recovery changes nothing.

use std::path::Path;

use msgbus::store::recovery;
use serde_json::json;

use crate::common::files::{as_after_a_crash, first_segment, quarantined, DataDir};
use crate::common::server::{open_store, spawn_app, start_app};

/// A stopped store holding `n` records, one commit each; returns its
/// manifest and active segment bytes.
async fn make_store(n: u64) -> (Vec<u8>, Vec<u8>) {
    let app = spawn_app().await;
    for i in 1..=n {
        app.publish_ok(&json!({
            "type": "t.torn",
            "source": "/torn",
            "id": format!("r{i}"),
            "data": {"i": i, "s": "ü"}
        }))
        .await;
    }
    let dir = app.stop().await;
    as_after_a_crash(dir.path());
    let manifest = std::fs::read(dir.path().join("manifest.json")).unwrap();
    let segment = std::fs::read(first_segment(dir.path())).unwrap();
    (manifest, segment)
}

/// End offsets (after the newline) of each record, and each record's event
/// bytes, found without msgbus's own parser.
fn records(segment: &[u8]) -> (Vec<usize>, Vec<Vec<u8>>) {
    #[derive(serde::Deserialize)]
    struct Rec<'a> {
        #[serde(borrow)]
        event: &'a serde_json::value::RawValue,
    }
    let mut ends = Vec::new();
    let mut events = Vec::new();
    let mut start = 0;
    for (i, b) in segment.iter().enumerate() {
        if *b == b'\n' {
            let line = std::str::from_utf8(&segment[start..i]).unwrap();
            let r: Rec<'_> = serde_json::from_str(line).unwrap();
            events.push(r.event.get().as_bytes().to_vec());
            ends.push(i + 1);
            start = i + 1;
        }
    }
    assert_eq!(
        start,
        segment.len(),
        "the stored segment ends with a newline"
    );
    (ends, events)
}

/// Checks that recovery kept exactly the first `complete` events, intact.
fn check_recovered(rec: &recovery::Recovered, events: &[Vec<u8>], complete: usize, what: &str) {
    assert_eq!(rec.index.len(), complete, "{what}: events in the index");
    assert_eq!(rec.report.events, complete as u64, "{what}: report.events");
    assert_eq!(rec.next_seq, complete as u64 + 1, "{what}: next seq");
    for (i, want) in events.iter().take(complete).enumerate() {
        let seq = i as u64 + 1;
        let hit = rec
            .index
            .get(seq)
            .unwrap_or_else(|| panic!("{what}: seq {seq} missing"));
        let seg = rec
            .index
            .segment(hit.entry.segment)
            .unwrap_or_else(|| panic!("{what}: seq {seq} has no segment"));
        let file = std::fs::File::open(&seg.path).expect("open the segment");
        let got = msgbus::store::index::load(&file, &seg.path, &hit)
            .unwrap_or_else(|e| panic!("{what}: seq {seq} unreadable: {e}"));
        assert_eq!(&got[..], &want[..], "{what}: seq {seq} bytes");
    }
    assert!(
        rec.index.get(complete as u64 + 1).is_none(),
        "{what}: nothing past the complete records"
    );
}

#[tokio::test]
async fn torn_tail_at_every_byte_offset_is_cut_and_quarantined() {
    let (manifest, full) = make_store(3).await;
    let (ends, events) = records(&full);
    assert_eq!(ends.len(), 3);
    assert_eq!(*ends.last().unwrap(), full.len());

    let dir = DataDir::temp();
    let data = dir.path();
    std::fs::write(data.join("manifest.json"), &manifest).unwrap();
    std::fs::create_dir_all(data.join("segments")).unwrap();
    let segment = first_segment(data);
    let quarantine = data.join("quarantine");

    for cut in 0..=full.len() {
        let what = format!("cut at {cut} of {}", full.len());
        if quarantine.exists() {
            std::fs::remove_dir_all(&quarantine).unwrap();
        }
        std::fs::write(&segment, &full[..cut]).unwrap();
        std::fs::write(data.join("manifest.json"), &manifest).unwrap();
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let valid_len = if complete == 0 { 0 } else { ends[complete - 1] };

        let rec = open_store(data).unwrap_or_else(|e| panic!("{what}: {e}"));
        check_recovered(&rec, &events, complete, &what);
        let in_quarantine = quarantined(data);
        if cut == valid_len {
            assert!(rec.report.torn_tail.is_none(), "{what}: nothing torn");
            assert!(in_quarantine.is_empty(), "{what}: {in_quarantine:?}");
        } else {
            let torn = rec
                .report
                .torn_tail
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: a torn tail must be reported"));
            assert_eq!(torn.offset, valid_len as u64, "{what}");
            assert_eq!(torn.bytes, (cut - valid_len) as u64, "{what}");
            assert!(torn.file.ends_with("00000000000000000001.jsonl"), "{what}");
            assert_eq!(in_quarantine.len(), 1, "{what}: {in_quarantine:?}");
            assert_eq!(
                Path::new(&torn.quarantined_to),
                in_quarantine[0].as_path(),
                "{what}"
            );
            assert_eq!(
                std::fs::read(&in_quarantine[0]).unwrap(),
                &full[valid_len..cut],
                "{what}: the quarantine holds exactly the cut bytes"
            );
        }
        let after_first = std::fs::read(&segment).unwrap();
        assert_eq!(
            after_first,
            &full[..valid_len],
            "{what}: truncated to the valid prefix"
        );
        drop(rec);

        // Recovery is idempotent: nothing more is cut or quarantined.
        let rec = open_store(data).unwrap_or_else(|e| panic!("{what}, again: {e}"));
        assert!(
            rec.report.torn_tail.is_none(),
            "{what}: second run cuts nothing"
        );
        check_recovered(&rec, &events, complete, &format!("{what}, again"));
        drop(rec);
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            after_first,
            "{what}: unchanged"
        );
        assert_eq!(
            quarantined(data),
            in_quarantine,
            "{what}: no new quarantine file"
        );
    }
}

#[tokio::test]
async fn server_starts_after_a_torn_tail_and_appends_after_the_cut() {
    let app = spawn_app().await;
    for i in 1..=3 {
        app.publish_ok(&json!({"type": "t.torn", "source": "/torn", "id": format!("r{i}")}))
            .await;
    }
    let dir = app.stop().await;
    as_after_a_crash(dir.path());
    let segment = first_segment(dir.path());
    let full = std::fs::read(&segment).unwrap();
    let (ends, _) = records(&full);
    // Cut the third record in half, and add junk a crash could leave.
    let mut torn = full[..(ends[1] + ends[2]) / 2].to_vec();
    torn.extend_from_slice(b"\0\0\0");
    std::fs::write(&segment, &torn).unwrap();

    let app = start_app(dir, &[]).await;
    let all = app.read_all().await;
    let ids: Vec<&str> = all.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["r1", "r2"]);
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["store"]["recovered_torn_tail"], true, "{stats}");
    assert_eq!(quarantined(app.data_dir()).len(), 1);

    // The next event takes seq 3 and lands right after the valid prefix.
    let res = app
        .publish_ok(&json!({"type": "t.torn", "source": "/torn", "id": "r3b"}))
        .await;
    assert_eq!(res["seq"], 3);
    // The torn "r3" was never acknowledged... but a retry of it is new.
    let res = app
        .publish_ok(&json!({"type": "t.torn", "source": "/torn", "id": "r3"}))
        .await;
    assert_eq!(res["seq"], 4);
    let app = app.restart(&[]).await;
    let all = app.read_all().await;
    let ids: Vec<&str> = all.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["r1", "r2", "r3b", "r3"]);
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["store"]["recovered_torn_tail"], false);
    let disk = std::fs::read(first_segment(app.data_dir())).unwrap();
    assert_eq!(
        &disk[..ends[1]],
        &full[..ends[1]],
        "the valid prefix is untouched"
    );
    assert_eq!(records(&disk).0.len(), 4);
}
