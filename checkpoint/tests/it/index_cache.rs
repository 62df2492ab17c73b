//! The merged index cache (`index.cache`): `create` deduplicates through it, and it stays
//! correct — or is ignored and rebuilt — when it is stale (a crash between a commit and its
//! rewrite, an older cache put back), damaged, or names layers that prune deleted; a layer
//! changed on disk after the cache was written is not trusted through the cache.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;
use parhelia_checkpoint::{ChangeHint, Manifest, Retention, Store};

fn cache(store: &Path) -> PathBuf {
    store.join("index.cache")
}

/// Content that compresses badly, so "stored again" is visible in `new_bytes`.
fn blob(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|x| {
            (x.wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                >> 13) as u8
        })
        .collect()
}

/// A fresh handle, as a new process would open the store (the in-memory index state of an
/// open `Store` would otherwise hide what is on disk).
fn reopen(store: &Path) -> Store {
    Store::open(store).unwrap()
}

fn check_restores(store: &Path, m: &Manifest, ws: &Path, out: &Path) {
    let s = reopen(store);
    s.verify(&m.id).unwrap();
    if out.exists() {
        fs::remove_dir_all(out).unwrap();
    }
    s.restore_tree(&m.id, "w", out).unwrap();
    assert_eq!(listing(out), listing(ws), "restore of {}", m.id);
}

struct Fixture {
    _t: tempfile::TempDir,
    ws: PathBuf,
    store: PathBuf,
    out: PathBuf,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    for i in 0..40 {
        write(
            &ws,
            &format!("d{}/f{i}.bin", i % 5),
            &blob(i, 3000 + i as usize),
        );
    }
    let store = t.path().join("store");
    let m = created(reopen(&store).create(&unknown("w", &ws)).unwrap());
    assert!(m.stats.new_layers >= 1);
    assert!(
        cache(&store).is_file(),
        "the first checkpoint writes the cache"
    );
    Fixture {
        out: t.path().join("out"),
        _t: t,
        ws,
        store,
    }
}

#[test]
fn create_deduplicates_through_the_cache() {
    let f = fixture();
    // A copy of existing content under a new name, and one genuinely new file.
    write(&f.ws, "copy.bin", &blob(7, 3007));
    write(&f.ws, "new.bin", &blob(1000, 5000));
    let m = created(
        reopen(&f.store)
            .create(&paths("w", &f.ws, &["copy.bin", "new.bin"]))
            .unwrap(),
    );
    assert_eq!(m.stats.new_bytes, 5000, "only new.bin is stored");
    check_restores(&f.store, &m, &f.ws, &f.out);
}

#[test]
fn a_stale_cache_is_completed_from_the_layers_it_lacks() {
    let f = fixture();
    let old = fs::read(cache(&f.store)).unwrap();
    // Several checkpoints, each with a new layer the old cache does not know.
    let mut last = None;
    for i in 0..20u32 {
        write(&f.ws, &format!("round{i}.bin"), &blob(500 + i, 4000));
        last = Some(created(
            reopen(&f.store)
                .create(&paths("w", &f.ws, &[&format!("round{i}.bin")]))
                .unwrap(),
        ));
    }
    check_restores(&f.store, last.as_ref().unwrap(), &f.ws, &f.out);
    // As if the process had crashed after committing those checkpoints but before writing
    // the cache: the old cache comes back.
    fs::write(cache(&f.store), &old).unwrap();
    write(&f.ws, "again.bin", &blob(512, 4000)); // the content of round12.bin
    write(&f.ws, "d1/f1.bin", &blob(1, 3001)); // unchanged content, rewritten
    write(&f.ws, "fresh.bin", &blob(9999, 1234));
    let m = created(
        reopen(&f.store)
            .create(&paths("w", &f.ws, &["again.bin", "d1/f1.bin", "fresh.bin"]))
            .unwrap(),
    );
    assert_eq!(
        m.stats.new_bytes, 1234,
        "content of uncached layers is found"
    );
    check_restores(&f.store, &m, &f.ws, &f.out);
    assert_ne!(
        fs::read(cache(&f.store)).unwrap(),
        old,
        "the cache is rewritten"
    );
    // A full scan against the new cache agrees.
    let m2 = created(reopen(&f.store).create(&unknown("w", &f.ws)).unwrap());
    assert_eq!(m2.stats.new_bytes, 0);
    check_restores(&f.store, &m2, &f.ws, &f.out);
}

type Damage = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn a_damaged_or_truncated_cache_is_never_trusted() {
    let f = fixture();
    let good_len = fs::read(cache(&f.store)).unwrap().len();
    let mut cases: Vec<Damage> = Vec::new();
    for at in [0usize, 9, 13, 20, 28, 40, 100, 200, 300] {
        cases.push(Box::new(move |d: &mut Vec<u8>| {
            let i = at.min(d.len() - 1);
            d[i] ^= 0x01;
        }));
    }
    // Spread over the header, the entries and the locator.
    for k in 1..12 {
        cases.push(Box::new(move |d: &mut Vec<u8>| {
            let i = d.len() * k / 12;
            d[i] ^= 0x40;
        }));
    }
    cases.push(Box::new(|d: &mut Vec<u8>| d.truncate(d.len() / 2)));
    cases.push(Box::new(|d: &mut Vec<u8>| d.truncate(40)));
    cases.push(Box::new(|d: &mut Vec<u8>| d.clear()));
    cases.push(Box::new(|d: &mut Vec<u8>| {
        d.iter_mut().for_each(|b| *b = 0)
    }));
    cases.push(Box::new(|d: &mut Vec<u8>| d.extend_from_slice(b"junk")));
    assert!(good_len > 1000);
    for (n, damage) in cases.iter().enumerate() {
        let mut d = fs::read(cache(&f.store)).unwrap();
        damage(&mut d);
        fs::write(cache(&f.store), &d).unwrap();
        let copy = format!("copy{n}.bin");
        let fresh = format!("fresh{n}.bin");
        write(&f.ws, &copy, &blob(n as u32 % 40, 3000 + n % 40));
        write(&f.ws, &fresh, &blob(7000 + n as u32, 2222));
        write(&f.ws, "d3/f3.bin", &blob(3, 3003)); // rewritten, same content
        let m = created(
            reopen(&f.store)
                .create(&paths("w", &f.ws, &[&copy, &fresh, "d3/f3.bin"]))
                .unwrap(),
        );
        assert_eq!(m.stats.new_bytes, 2222, "case {n}");
        check_restores(&f.store, &m, &f.ws, &f.out);
    }
}

#[test]
fn after_prune_the_cache_forgets_deleted_layers() {
    let f = fixture();
    // Checkpoints that each replace one large file (enough of them for the cache to be
    // rewritten on the way, so that it names their layers); keep only the newest two.
    let mut ms = Vec::new();
    for i in 0..20u32 {
        write(&f.ws, "big.bin", &blob(100 + i, 60_000));
        ms.push(created(
            reopen(&f.store)
                .create(&paths("w", &f.ws, &["big.bin"]))
                .unwrap(),
        ));
    }
    let before_prune = fs::read(cache(&f.store)).unwrap();
    let stats = reopen(&f.store)
        .prune(&Retention {
            keep_last: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert!(
        stats.layers_deleted + stats.layers_rewritten >= 1,
        "{stats:?}"
    );
    for (stale, seed) in [(false, 100), (true, 101)] {
        if stale {
            // A cache from before the prune (e.g. prune crashed before rewriting it) names
            // deleted layers: they must not be deduplicated against.
            fs::write(cache(&f.store), &before_prune).unwrap();
        }
        // This version of big.bin was only in pruned checkpoints: it is stored again.
        write(&f.ws, "old-big.bin", &blob(seed, 60_000));
        // The newest version is kept: deduplicated.
        write(&f.ws, "kept-big.bin", &blob(119, 60_000));
        let m = created(
            reopen(&f.store)
                .create(&paths("w", &f.ws, &["old-big.bin", "kept-big.bin"]))
                .unwrap(),
        );
        assert_eq!(m.stats.new_bytes, 60_000, "stale cache: {stale}");
        check_restores(&f.store, &m, &f.ws, &f.out);
        fs::remove_file(f.ws.join("old-big.bin")).unwrap();
        fs::remove_file(f.ws.join("kept-big.bin")).unwrap();
    }
    for m in &ms[18..] {
        reopen(&f.store).verify(&m.id).unwrap();
    }
}

#[test]
fn a_layer_changed_on_disk_is_not_deduplicated_against() {
    let f = fixture();
    let s = reopen(&f.store);
    let m = s.latest().unwrap().unwrap();
    let layers = s.load(&m.id).unwrap().layers;
    // Damage every layer's index trailer (rewriting the file, as any change would).
    for l in &layers {
        let p = f.store.join("layers").join(format!("{l}.tar.zst"));
        let mut d = fs::read(&p).unwrap();
        let at = d.len() - 16 - 40;
        d[at] ^= 0x80;
        fs::write(&p, &d).unwrap();
    }
    // A new tree (no parent to build on) holding a copy of damaged content: stored again,
    // as the layers' own indexes no longer verify.
    let other = f.ws.parent().unwrap().join("other");
    write(&other, "f.bin", &blob(5, 3005));
    let o = created(
        reopen(&f.store)
            .create(&request(vec![(spec("o", &other), ChangeHint::Unknown)]))
            .unwrap(),
    );
    assert_eq!(o.stats.new_bytes, 3005);
    let s = reopen(&f.store);
    s.verify(&o.id).unwrap();
    assert_eq!(s.verify(&m.id).unwrap_err().code(), "E620");
}

/// A cache a session forged (it can write its store): well formed and checksummed, sparse,
/// and claiming 2^32 - 1 entries all in one bucket. Reading that bucket would allocate
/// ~245 GB (the process aborts); the reader refuses a count no present layer could index,
/// bucket bits the writer would not choose and a bucket far above the average before
/// allocating anything, and `create` falls back to the layers' own indexes.
#[test]
fn a_forged_sparse_cache_is_refused_before_anything_is_allocated() {
    let f = fixture();
    let good = fs::read(cache(&f.store)).unwrap();
    let u32_at = |d: &[u8], o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    let u64_at = |d: &[u8], o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
    let layers = u64_at(&good, 16) as usize;
    let table = 32 + layers * 64;
    // (bits, count) forgeries: the writer's bits for the count, and bits it would not pick.
    for (bits, count) in [
        (20u32, u64::from(u32::MAX)),
        (0, u64::from(u32::MAX)),
        (20, 64),
    ] {
        let buckets = 1usize << bits;
        let hlen = table + (buckets + 1) * 4 + buckets * 16 + 64;
        let mut h = good[..table].to_vec();
        h[12..16].copy_from_slice(&bits.to_le_bytes());
        h[24..32].copy_from_slice(&count.to_le_bytes());
        // Every entry in bucket 0.
        h.extend_from_slice(&0u32.to_le_bytes());
        for _ in 0..buckets {
            h.extend_from_slice(&(count as u32).to_le_bytes());
        }
        h.resize(hlen - 32, 0);
        let sum = parhelia_checkpoint::BlobId::of(&h);
        h.extend_from_slice(&sum.0);
        assert_eq!(h.len(), hlen);
        assert_eq!(u32_at(&h, 12), bits);
        let file = fs::File::create(cache(&f.store)).unwrap();
        use std::io::Write as _;
        (&file).write_all(&h).unwrap();
        // Sparse: the size `open` checks, with nothing behind it.
        file.set_len(hlen as u64 + count * (57 + 12)).unwrap();
        drop(file);
        let fresh = format!("fresh{bits}-{count}.bin");
        write(&f.ws, &fresh, &blob(bits.wrapping_add(count as u32), 2345));
        write(&f.ws, "copy-again.bin", &blob(5, 3005)); // d0/f5.bin's content
        let m = created(
            reopen(&f.store)
                .create(&paths("w", &f.ws, &[&fresh, "copy-again.bin"]))
                .unwrap(),
        );
        assert_eq!(m.stats.new_bytes, 2345, "bits {bits}, count {count}");
        check_restores(&f.store, &m, &f.ws, &f.out);
    }
}
