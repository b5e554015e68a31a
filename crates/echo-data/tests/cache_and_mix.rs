//! The pre-tokenisation cache, mixes, and the synthetic dataset through the pipeline.

mod common;

use common::{tokenizer, train};
use echo_data::{
    encode_records, load_dataset, load_mix, read_records, synthetic_records, write_records_json, Cache, CacheStatus,
    EncodeConfig, MixSource, MixSpec, Progress, SyntheticSpec, Template,
};

#[test]
fn cache_hits_and_rebuilds_corrupted_files() {
    let d = tempfile::tempdir().unwrap();
    let cache = Cache::new(d.path().join("cache"));
    let tok = tokenizer();
    let tpl = Template::alpaca();
    let cfg = EncodeConfig::default();
    let data = train("ARC-Challenge");
    let (a, s) = load_dataset(&data, &tok, &tpl, &cfg, Some(&cache), Progress::Hidden).unwrap();
    let CacheStatus::Miss(file) = s else { panic!("{s:?}") };
    assert!(file.exists());
    let (b, s) = load_dataset(&data, &tok, &tpl, &cfg, Some(&cache), Progress::Hidden).unwrap();
    assert_eq!(s, CacheStatus::Hit(file.clone()));
    assert_eq!(a, b);
    let (c, s) = load_dataset(&data, &tok, &tpl, &cfg, None, Progress::Hidden).unwrap();
    assert_eq!((c, s), (a.clone(), CacheStatus::Off));

    // Flip one byte in the middle: detected, rebuilt, same data.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let (r, s) = load_dataset(&data, &tok, &tpl, &cfg, Some(&cache), Progress::Hidden).unwrap();
    assert!(matches!(&s, CacheStatus::Rebuilt(_, why) if why.contains("checksum")), "{s:?}");
    assert_eq!(r, a);
    // Cut short.
    std::fs::write(&file, &bytes[..100]).unwrap();
    let (_, s) = load_dataset(&data, &tok, &tpl, &cfg, Some(&cache), Progress::Hidden).unwrap();
    assert!(matches!(s, CacheStatus::Rebuilt(..)), "{s:?}");
    assert_eq!(
        load_dataset(&data, &tok, &tpl, &cfg, Some(&cache), Progress::Hidden).unwrap().1,
        CacheStatus::Hit(file.clone())
    );
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // Anything that changes the result changes the key.
    let other_cfg = EncodeConfig { cutoff: Some(300), ..cfg.clone() };
    let (x, s) = load_dataset(&data, &tok, &tpl, &other_cfg, Some(&cache), Progress::Hidden).unwrap();
    assert!(matches!(s, CacheStatus::Miss(_)), "cutoff is part of the key");
    assert_ne!(x, a);
    let tpl2 = Template::new("alpaca2", &tpl.with_input, &tpl.without_input.replace("Below", "Here")).unwrap();
    assert!(matches!(
        load_dataset(&data, &tok, &tpl2, &cfg, Some(&cache), Progress::Hidden).unwrap().1,
        CacheStatus::Miss(_)
    ));
    let copy = d.path().join("copy.json");
    let mut text = std::fs::read(&data).unwrap();
    text.push(b'\n');
    std::fs::write(&copy, &text).unwrap();
    assert!(matches!(
        load_dataset(&copy, &tok, &tpl, &cfg, Some(&cache), Progress::Hidden).unwrap().1,
        CacheStatus::Miss(_)
    ));
}

#[test]
fn a_mix_of_commonsense_sets() {
    let tok = tokenizer();
    let spec = MixSpec {
        sources: vec![
            MixSource { path: train("ARC-Challenge"), weight: 1.0 },
            MixSource { path: train("openbookqa"), weight: 0.25 },
        ],
        total: None,
        seed: 3,
    };
    let cfg = EncodeConfig { cutoff: None, ..Default::default() };
    let m = load_mix(&spec, &tok, &Template::alpaca(), &cfg, None, Progress::Hidden).unwrap();
    let want = [1119, (4957.0f64 * 0.25).round() as usize];
    assert_eq!(m.counts, want);
    assert_eq!(m.examples.len(), want[0] + want[1]);
    for (s, &w) in want.iter().enumerate() {
        assert_eq!(m.examples.iter().filter(|e| e.source == s).count(), w);
    }
    assert_eq!(m.report().records, 1119 + 4957);
    // Sources are interleaved, not concatenated.
    assert!(m.examples[..200].iter().any(|e| e.source == 1) && m.examples[..200].iter().any(|e| e.source == 0));
}

#[test]
fn the_synthetic_task_goes_through_the_pipeline() {
    let tok = tokenizer();
    let tpl = Template::alpaca();
    let recs = synthetic_records(&SyntheticSpec { count: 500, seed: 1, ..Default::default() }).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("synthetic.json");
    write_records_json(&p, &recs).unwrap();
    assert_eq!(read_records(&p).unwrap(), recs, "written in the LLM-Adapters layout, read back unchanged");
    let ds = encode_records(&tok, &tpl, &recs, &EncodeConfig::default(), &p, 0).unwrap();
    assert_eq!((ds.report.examples, ds.report.dropped, ds.report.truncated), (500, 0, 0));
    let longest_prompt = ds.examples.iter().map(|e| e.prompt_len).max().unwrap();
    let chars = recs.iter().map(|r| tpl.prompt(r).len()).max().unwrap();
    eprintln!(
        "synthetic: longest prompt {longest_prompt} fixture tokens ({chars} chars), longest example {}",
        ds.report.longest
    );
    for (e, r) in ds.examples.iter().zip(&recs) {
        let answer = tok.decode(&e.input_ids[e.prompt_len..], true).unwrap();
        assert_eq!(answer, r.output);
    }
}
