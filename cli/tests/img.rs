//! `vstor img` against qemu-img: images either tool creates are accepted by the other, and
//! info / map / check print the same JSON. With qemu-img 7.2 the JSON must match byte for byte;
//! with other versions only the fields both print are compared (qemu 8+ adds "compressed" to
//! map entries and "children" to info). Tests are skipped when qemu-img is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn vstor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vstor"))
        .arg("img")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run vstor")
}

fn tool(name: &str, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

fn qemu_img(args: &[&str]) -> Output {
    tool("qemu-img", args)
}

/// qemu-img's version as (major, minor), or `None` when it is not installed.
fn qemu_version() -> Option<(u32, u32)> {
    let out = Command::new("qemu-img").arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let v = s.split_whitespace().nth(2)?;
    let mut it = v.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    Some((it.next()?, it.next().unwrap_or(0)))
}

macro_rules! need_qemu {
    () => {
        match qemu_version() {
            Some(v) => v,
            None => {
                eprintln!("qemu-img not installed: skipped");
                return;
            }
        }
    };
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        text(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// Fields present in both values must be equal (recursively; arrays must have equal lengths).
fn assert_common_eq(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                if let Some(vb) = y.get(k) {
                    assert_common_eq(va, vb, &format!("{path}.{k}"));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(
                x.len(),
                y.len(),
                "{path}: array lengths differ:\n{a:#}\n{b:#}"
            );
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                assert_common_eq(va, vb, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{path} differs"),
    }
}

/// Both tools print the same document for `args` (byte for byte with qemu-img 7.2).
fn same_output(v: (u32, u32), args: &[&str]) -> (Output, Output) {
    let ours = vstor(args);
    let theirs = qemu_img(args);
    assert_eq!(
        code(&ours),
        code(&theirs),
        "exit status of {args:?}: ours stderr {}",
        String::from_utf8_lossy(&ours.stderr)
    );
    if args.contains(&"--output=json") {
        assert_common_eq(&json(&ours), &json(&theirs), &format!("{args:?}"));
        assert_common_eq(&json(&theirs), &json(&ours), &format!("{args:?}"));
    }
    if v == (7, 2) {
        assert_eq!(text(&ours), text(&theirs), "output of {args:?}");
    }
    (ours, theirs)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().to_string()
}

/// A qcow2 image qemu wrote: data at 0, a zero cluster at 1M.
fn qemu_written(dir: &Path) -> String {
    let img = p(dir, "q.qcow2");
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", &img, "10M"]),
        "qemu-img create",
    );
    ok(
        tool(
            "qemu-io",
            &["-c", "write -P 0xab 0 64k", "-c", "write -z 1M 64k", &img],
        ),
        "qemu-io",
    );
    img
}

#[test]
fn create_with_each_option_is_valid_for_qemu() {
    let v = need_qemu!();
    let dir = tmp();
    let cases: &[(&str, &str)] = &[
        ("", "10M"),
        ("compat=0.10", "1G"),
        ("compat=v2", "1G"),
        ("compat=v3", "1G"),
        ("cluster_size=4k", "100M"),
        ("cluster_size=2M", "1G"),
        ("lazy_refcounts=on", "10M"),
        ("refcount_bits=1", "10M"),
        ("refcount_bits=8", "10M"),
        ("refcount_bits=64", "10M"),
        ("extended_l2=on", "10M"),
        ("extended_l2=on,cluster_size=128k", "10M"),
        ("compression_type=zstd", "10M"),
        ("preallocation=metadata", "20M"),
        ("preallocation=falloc", "4M"),
        ("preallocation=full", "4M"),
        ("preallocation=metadata,cluster_size=4k", "5M"),
    ];
    for (i, (opts, size)) in cases.iter().enumerate() {
        let ours = p(dir.path(), &format!("v{i}.qcow2"));
        let theirs = p(dir.path(), &format!("q{i}.qcow2"));
        let mut args = vec!["create", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let mut a1 = args.clone();
        a1.extend([ours.as_str(), size]);
        let mut a2 = args.clone();
        a2.extend([theirs.as_str(), size]);
        let o1 = ok(vstor(&a1), &format!("vstor img create {opts}"));
        let o2 = ok(qemu_img(&a2), &format!("qemu-img create {opts}"));
        // Same "Formatting ..." line, apart from the file name.
        if v == (7, 2) {
            assert_eq!(
                text(&o1).replace(&ours, "X"),
                text(&o2).replace(&theirs, "X"),
                "create -o {opts}"
            );
        }
        let c = qemu_img(&["check", &ours]);
        assert_eq!(
            code(&c),
            0,
            "qemu-img check after create -o {opts}: {}{}",
            text(&c),
            String::from_utf8_lossy(&c.stderr)
        );
        let mut i1 = json(&ok(qemu_img(&["info", "--output=json", &ours]), "info"));
        let mut i2 = json(&ok(qemu_img(&["info", "--output=json", &theirs]), "info"));
        for j in [&mut i1, &mut i2] {
            let o = j.as_object_mut().unwrap();
            o.remove("filename");
            o.remove("actual-size");
            o.remove("children");
        }
        assert_eq!(i1, i2, "qemu-img info of images created with -o {opts}");
        same_output(v, &["info", "--output=json", &ours]);
        same_output(v, &["info", &ours]);
        same_output(v, &["check", "--output=json", &ours]);
        same_output(v, &["map", "--output=json", &ours]);
    }
}

#[test]
fn create_with_backing_and_data_file() {
    let v = need_qemu!();
    let dir = tmp();
    let base = qemu_written(dir.path());
    let top = p(dir.path(), "top.qcow2");
    ok(
        vstor(&["create", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top]),
        "create -b",
    );
    assert_eq!(code(&qemu_img(&["check", &top])), 0);
    same_output(v, &["info", "--output=json", &top]);
    same_output(v, &["info", &top]);
    ok(
        tool("qemu-io", &["-c", "write -P 1 64k 64k", &top]),
        "qemu-io",
    );
    same_output(v, &["map", "--output=json", &top]);
    same_output(v, &["map", &top]);
    same_output(v, &["info", "--backing-chain", "--output=json", &top]);
    same_output(v, &["info", "--backing-chain", &top]);
    // A top image larger than its backing file: past the backing's end qemu reports depth 0.
    let big = p(dir.path(), "big.qcow2");
    ok(
        vstor(&[
            "create", "-f", "qcow2", "-b", &base, "-F", "qcow2", &big, "24M",
        ]),
        "create",
    );
    ok(
        tool("qemu-io", &["-c", "write -P 4 20M 64k", &big]),
        "qemu-io",
    );
    same_output(v, &["map", "--output=json", &big]);
    // A raw backing file.
    let raw = p(dir.path(), "base.raw");
    ok(qemu_img(&["convert", "-O", "raw", &base, &raw]), "convert");
    let over_raw = p(dir.path(), "over-raw.qcow2");
    ok(
        vstor(&[
            "create", "-f", "qcow2", "-b", &raw, "-F", "raw", &over_raw, "16M",
        ]),
        "create",
    );
    same_output(v, &["map", "--output=json", &over_raw]);
    same_output(v, &["info", "--backing-chain", "--output=json", &over_raw]);
    // Relative backing names resolve against the image's directory.
    let rel = p(dir.path(), "rel.qcow2");
    ok(
        vstor(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            "backing_file=q.qcow2,backing_fmt=qcow2",
            &rel,
        ]),
        "create rel",
    );
    same_output(v, &["info", "--output=json", &rel]);
    same_output(v, &["info", &rel]);
    // Missing backing format is refused like qemu-img 7.2 does.
    assert_ne!(
        code(&vstor(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            &base,
            &p(dir.path(), "x.qcow2")
        ])),
        0
    );
    // External data file.
    // (An absolute data file name: QEMU resolves relative ones against the working directory.)
    let df = p(dir.path(), "df.qcow2");
    let dfo = format!("data_file={},data_file_raw=on", p(dir.path(), "df.raw"));
    ok(
        vstor(&["create", "-f", "qcow2", "-o", &dfo, &df, "8M"]),
        "create data_file",
    );
    assert_eq!(code(&qemu_img(&["check", &df])), 0);
    same_output(v, &["info", "--output=json", &df]);
    same_output(v, &["info", &df]);
}

#[test]
fn info_map_check_match_qemu_on_qemu_written_image() {
    let v = need_qemu!();
    let dir = tmp();
    let img = qemu_written(dir.path());
    same_output(v, &["info", "--output=json", &img]);
    same_output(v, &["info", &img]);
    same_output(v, &["map", "--output=json", &img]);
    same_output(v, &["map", &img]);
    same_output(v, &["check", "--output=json", &img]);
    same_output(v, &["check", &img]);
    // Compressed clusters and a second L2 table.
    let c = p(dir.path(), "c.qcow2");
    ok(
        qemu_img(&["convert", "-c", "-O", "qcow2", &img, &c]),
        "qemu-img convert -c",
    );
    ok(
        tool(
            "qemu-io",
            &["-c", "write -P 7 9M 128k", "-c", "write -P 9 12k 4k", &c],
        ),
        "qemu-io",
    );
    same_output(v, &["info", "--output=json", &c]);
    same_output(v, &["map", "--output=json", &c]);
    same_output(v, &["check", "--output=json", &c]);
    same_output(v, &["check", &c]);
}

#[test]
fn raw_images() {
    let v = need_qemu!();
    let dir = tmp();
    let r = p(dir.path(), "r.raw");
    ok(vstor(&["create", "-f", "raw", &r, "1M"]), "create raw");
    assert_eq!(std::fs::metadata(&r).unwrap().len(), 1 << 20);
    ok(
        tool("qemu-io", &["-f", "raw", "-c", "write -P 5 64k 8k", &r]),
        "qemu-io",
    );
    same_output(v, &["info", "--output=json", "-f", "raw", &r]);
    same_output(v, &["info", "-f", "raw", &r]);
    same_output(v, &["map", "--output=json", "-f", "raw", &r]);
    let c = vstor(&["check", "-f", "raw", &r]);
    assert_eq!(code(&c), 63);
    let full = p(dir.path(), "full.raw");
    ok(
        vstor(&[
            "create",
            "-f",
            "raw",
            "-o",
            "preallocation=full",
            &full,
            "1M",
        ]),
        "prealloc",
    );
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&full).unwrap().blocks() * 512 >= 1 << 20);
    // Sizes with lower-case suffixes.
    let k = p(dir.path(), "k.raw");
    ok(vstor(&["create", "-f", "raw", &k, "64k"]), "64k");
    assert_eq!(std::fs::metadata(&k).unwrap().len(), 65536);
}

#[test]
fn compare_exit_codes() {
    need_qemu!();
    let dir = tmp();
    let a = qemu_written(dir.path());
    let b = p(dir.path(), "b.qcow2");
    ok(qemu_img(&["convert", "-O", "qcow2", &a, &b]), "convert");
    let raw = p(dir.path(), "a.raw");
    ok(qemu_img(&["convert", "-O", "raw", &a, &raw]), "convert raw");
    for (x, y) in [(&a, &b), (&a, &raw), (&raw, &b)] {
        let o = vstor(&["compare", x, y]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        assert_eq!(text(&o), "Images are identical.\n");
    }
    ok(tool("qemu-io", &["-c", "write -P 1 1500 1", &b]), "qemu-io");
    let o = vstor(&["compare", &a, &b]);
    assert_eq!(code(&o), 1);
    assert_eq!(text(&o), text(&qemu_img(&["compare", &a, &b])));
    // Excess beyond the smaller image: zero is fine, unless strict.
    let big = p(dir.path(), "big.raw");
    ok(qemu_img(&["convert", "-O", "raw", &a, &big]), "convert");
    ok(qemu_img(&["resize", "-f", "raw", &big, "12M"]), "resize");
    let o = vstor(&["compare", &a, &big]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(text(&o), text(&qemu_img(&["compare", &a, &big])));
    assert_eq!(code(&vstor(&["compare", "-s", &a, &big])), 1);
    ok(
        tool("qemu-io", &["-f", "raw", "-c", "write -P 1 11M 512", &big]),
        "qemu-io",
    );
    let o = vstor(&["compare", &a, &big]);
    assert_eq!(code(&o), 1);
    assert_eq!(text(&o), text(&qemu_img(&["compare", &a, &big])));
    // Strict: same content, different allocation (and the messages qemu-img prints).
    let zeroed = p(dir.path(), "zeroed.qcow2");
    ok(
        qemu_img(&["convert", "-O", "qcow2", &a, &zeroed]),
        "convert",
    );
    ok(
        tool(
            "qemu-io",
            &["-c", "write -z 3M 64k", "-c", "write -P 0 5M 64k", &zeroed],
        ),
        "qemu-io",
    );
    for (x, y) in [
        (&a, &raw),
        (&raw, &a),
        (&a, &zeroed),
        (&zeroed, &raw),
        (&a, &big),
    ] {
        let o = vstor(&["compare", "-s", x, y]);
        let q = qemu_img(&["compare", "-s", x, y]);
        assert_eq!(
            (code(&o), text(&o)),
            (code(&q), text(&q)),
            "compare -s {x} {y}"
        );
        let o = vstor(&["compare", x, y]);
        let q = qemu_img(&["compare", x, y]);
        assert_eq!(
            (code(&o), text(&o)),
            (code(&q), text(&q)),
            "compare {x} {y}"
        );
    }
    // Errors are 2.
    assert_eq!(code(&vstor(&["compare", &a, &p(dir.path(), "missing")])), 2);
}

#[test]
fn convert_is_identical_and_sparse() {
    need_qemu!();
    let dir = tmp();
    let src = p(dir.path(), "src.raw");
    ok(
        qemu_img(&["create", "-q", "-f", "raw", &src, "20M"]),
        "create",
    );
    ok(
        tool(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0x11 0 100k",
                "-c",
                "write -P 0x22 5M 1M",
                "-c",
                "write -P 0x33 19M 4k",
                &src,
            ],
        ),
        "qemu-io",
    );
    for extra in [
        &[][..],
        &["-c"][..],
        &["-o", "cluster_size=4k"][..],
        &["-c", "-o", "compression_type=zstd"][..],
    ] {
        let dst = p(dir.path(), "dst.qcow2");
        let _ = std::fs::remove_file(&dst);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(extra);
        args.extend([src.as_str(), dst.as_str()]);
        ok(vstor(&args), &format!("convert {extra:?}"));
        let c = qemu_img(&["check", "--output=json", &dst]);
        assert_eq!(code(&c), 0, "check after convert {extra:?}: {}", text(&c));
        let cmp = qemu_img(&["compare", &src, &dst]);
        assert_eq!(
            code(&cmp),
            0,
            "compare after convert {extra:?}: {}",
            text(&cmp)
        );
        let info = json(&qemu_img(&["info", "--output=json", &dst]));
        assert!(
            info["actual-size"].as_u64().unwrap() < 4 << 20,
            "convert {extra:?} is not sparse: {info:#}"
        );
        let chk = json(&c);
        if extra.contains(&"-c") {
            assert!(
                chk["compressed-clusters"].as_u64().unwrap_or(0) > 0,
                "{chk:#}"
            );
        }
    }
    // qcow2 (with a backing chain) to raw: flattened.
    let base = qemu_written(dir.path());
    let top = p(dir.path(), "top.qcow2");
    ok(
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
        ]),
        "create",
    );
    ok(
        tool("qemu-io", &["-c", "write -P 3 2M 64k", &top]),
        "qemu-io",
    );
    let flat = p(dir.path(), "flat.raw");
    ok(
        vstor(&["convert", "-O", "raw", &top, &flat]),
        "convert to raw",
    );
    assert_eq!(code(&qemu_img(&["compare", &top, &flat])), 0);
    // Progress goes to stderr.
    let pr = p(dir.path(), "pr.qcow2");
    let o = ok(
        vstor(&["convert", "-p", "-O", "qcow2", &top, &pr]),
        "convert -p",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("(100.00/100%)"));
    assert_eq!(code(&qemu_img(&["compare", &top, &pr])), 0);
}

#[test]
fn snapshots_interoperate() {
    let v = need_qemu!();
    let dir = tmp();
    let img = qemu_written(dir.path());
    ok(vstor(&["snapshot", "-c", "one", &img]), "snapshot -c");
    ok(
        qemu_img(&["snapshot", "-c", "two", &img]),
        "qemu snapshot -c",
    );
    assert_eq!(code(&qemu_img(&["check", &img])), 0);
    let ours = text(&ok(vstor(&["snapshot", "-l", &img]), "snapshot -l"));
    let theirs = text(&ok(qemu_img(&["snapshot", "-l", &img]), "qemu snapshot -l"));
    assert!(ours.contains(" one ") && ours.contains(" two "), "{ours}");
    if v == (7, 2) {
        assert_eq!(ours, theirs);
    }
    same_output(v, &["info", "--output=json", &img]);
    // Change the data, revert with our apply, check with qemu.
    let orig = p(dir.path(), "orig.raw");
    ok(qemu_img(&["convert", "-O", "raw", &img, &orig]), "convert");
    ok(
        tool("qemu-io", &["-c", "write -P 0x5a 0 128k", &img]),
        "qemu-io",
    );
    assert_eq!(code(&qemu_img(&["compare", &img, &orig])), 1);
    ok(vstor(&["snapshot", "-a", "one", &img]), "snapshot -a");
    assert_eq!(code(&qemu_img(&["compare", &img, &orig])), 0);
    ok(vstor(&["snapshot", "-d", "two", &img]), "snapshot -d");
    ok(
        qemu_img(&["snapshot", "-d", "one", &img]),
        "qemu snapshot -d",
    );
    assert_eq!(text(&vstor(&["snapshot", "-l", &img])), "");
    let c = qemu_img(&["check", &img]);
    assert_eq!(code(&c), 0, "{}", text(&c));
}

#[test]
fn check_reports_leaks_and_repairs() {
    let v = need_qemu!();
    let dir = tmp();
    let img = qemu_written(dir.path());
    // Leak two clusters: grow the file by two clusters and give them refcount 1 without any
    // reference (the first refcount block covers them: 16-bit refcounts, 32768 clusters).
    let h = std::fs::read(&img).unwrap();
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let rt_off = be64(&h, 48) as usize;
    let rb_off = be64(&h, rt_off);
    let next = (h.len() as u64).div_ceil(65536);
    let mut f = h.clone();
    f.resize(((next + 2) * 65536) as usize, 0);
    for c in [next, next + 1] {
        let pos = (rb_off + c * 2) as usize;
        f[pos..pos + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    std::fs::write(&img, &f).unwrap();
    let (ours, _) = same_output(v, &["check", "--output=json", &img]);
    assert_eq!(code(&ours), 3);
    same_output(v, &["check", &img]);
    let copy = PathBuf::from(p(dir.path(), "copy.qcow2"));
    std::fs::copy(&img, &copy).unwrap();
    let o = vstor(&["check", "-r", "leaks", &img]);
    assert_eq!(
        code(&o),
        0,
        "{}{}",
        text(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(code(&qemu_img(&["check", &img])), 0);
    let q = qemu_img(&["check", "-r", "leaks", copy.to_str().unwrap()]);
    assert_eq!(
        text(&o).replace(&img, "X"),
        text(&q).replace(copy.to_str().unwrap(), "X")
    );
}

#[test]
fn bench_runs() {
    let dir = tmp();
    let r = p(dir.path(), "b.raw");
    ok(vstor(&["create", "-f", "raw", &r, "16M"]), "create");
    let o = ok(
        vstor(&[
            "bench",
            "-f",
            "raw",
            "-c",
            "2000",
            "-d",
            "8",
            "-w",
            "--pattern",
            "7",
            &r,
        ]),
        "bench -w",
    );
    let s = text(&o);
    assert!(s.starts_with(
        "Sending 2000 write requests, 4096 bytes each, 8 in parallel (starting at offset 0, step size 4096)\n"
    ), "{s}");
    assert!(s.contains("Run completed in "), "{s}");
    let data = std::fs::read(&r).unwrap();
    assert!(data[..2000 * 4096].iter().all(|&b| b == 7));
    ok(
        vstor(&[
            "bench", "-f", "raw", "-c", "1000", "-d", "4", "-s", "8k", "--random", "42", &r,
        ]),
        "bench random",
    );
    ok(
        vstor(&[
            "bench", "-f", "raw", "-c", "1000", "-i", "threads", "--queues", "2", &r,
        ]),
        "bench threads",
    );
    let q = p(dir.path(), "b.qcow2");
    ok(vstor(&["create", "-f", "qcow2", &q, "16M"]), "create");
    ok(
        vstor(&["bench", "-c", "2000", "-w", "--flush-interval", "100", &q]),
        "bench qcow2",
    );
    if qemu_version().is_some() {
        assert_eq!(code(&qemu_img(&["check", &q])), 0);
    }
}

/// base (data at 0..1M and 3M), top over it (data at 512k..1.5M, a zero range at 3M).
fn chain(dir: &Path) -> (String, String, String) {
    let base = p(dir, "base.qcow2");
    let top = p(dir, "top.qcow2");
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", &base, "10M"]),
        "create",
    );
    ok(
        tool(
            "qemu-io",
            &["-c", "write -P 1 0 1M", "-c", "write -P 5 3M 64k", &base],
        ),
        "qemu-io",
    );
    ok(
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
        ]),
        "create",
    );
    ok(
        tool(
            "qemu-io",
            &["-c", "write -P 2 512k 1M", "-c", "write -z 3M 4k", &top],
        ),
        "qemu-io",
    );
    let want = p(dir, "want.raw");
    ok(qemu_img(&["convert", "-O", "raw", &top, &want]), "convert");
    (base, top, want)
}

#[test]
fn commit_writes_into_backing_and_empties() {
    need_qemu!();
    let dir = tmp();
    let (base, top, want) = chain(dir.path());
    let o = ok(vstor(&["commit", &top]), "commit");
    assert_eq!(text(&o), "Image committed.\n");
    for img in [&base, &top] {
        assert_eq!(code(&qemu_img(&["check", img])), 0, "check {img}");
        assert_eq!(
            code(&qemu_img(&["compare", img, &want])),
            0,
            "compare {img}"
        );
    }
    let map = json(&qemu_img(&["map", "--output=json", &top]));
    assert!(
        map.as_array().unwrap().iter().all(|e| e["depth"] == 1),
        "top not empty: {map:#}"
    );
}

#[test]
fn rebase_safe_and_unsafe() {
    need_qemu!();
    let dir = tmp();
    let (base, top, want) = chain(dir.path());
    let nb = p(dir.path(), "nb.qcow2");
    ok(
        qemu_img(&["create", "-q", "-f", "qcow2", &nb, "10M"]),
        "create",
    );
    ok(
        tool("qemu-io", &["-c", "write -P 9 5M 64k", &nb]),
        "qemu-io",
    );
    ok(
        vstor(&["rebase", "-b", "nb.qcow2", "-F", "qcow2", &top]),
        "rebase",
    );
    let info = json(&qemu_img(&["info", "--output=json", &top]));
    assert_eq!(info["backing-filename"], "nb.qcow2");
    assert_eq!(info["full-backing-filename"], nb.as_str());
    assert_eq!(code(&qemu_img(&["check", &top])), 0);
    assert_eq!(code(&qemu_img(&["compare", &top, &want])), 0);
    // Without a backing file at all.
    ok(vstor(&["rebase", "-b", "", &top]), "rebase -b ''");
    assert!(json(&qemu_img(&["info", "--output=json", &top]))
        .get("backing-filename")
        .is_none());
    assert_eq!(code(&qemu_img(&["compare", &top, &want])), 0);
    // Unsafe: only the name changes.
    ok(
        vstor(&["rebase", "-u", "-b", &base, "-F", "qcow2", &top]),
        "rebase -u",
    );
    let info = json(&qemu_img(&["info", "--output=json", &top]));
    assert_eq!(info["backing-filename"], base.as_str());
    assert_eq!(code(&qemu_img(&["check", &top])), 0);
    // A backing format is required.
    assert_eq!(code(&vstor(&["rebase", "-b", &base, &top])), 1);
}

#[test]
fn resize_grows_and_shrinks() {
    need_qemu!();
    let dir = tmp();
    let img = qemu_written(dir.path());
    ok(vstor(&["resize", &img, "+10M"]), "resize +10M");
    let info = json(&qemu_img(&["info", "--output=json", &img]));
    assert_eq!(info["virtual-size"], 20 << 20);
    assert_eq!(code(&qemu_img(&["check", &img])), 0);
    assert_eq!(
        code(&vstor(&["resize", &img, "5M"])),
        1,
        "shrink needs --shrink"
    );
    ok(
        vstor(&["resize", "--shrink", &img, "5M"]),
        "resize --shrink",
    );
    let info = json(&qemu_img(&["info", "--output=json", &img]));
    assert_eq!(info["virtual-size"], 5 << 20);
    assert_eq!(code(&qemu_img(&["check", &img])), 0);
    let r = p(dir.path(), "r.raw");
    ok(vstor(&["create", "-f", "raw", &r, "1M"]), "create");
    ok(vstor(&["resize", "-f", "raw", &r, "+1M"]), "resize raw");
    assert_eq!(std::fs::metadata(&r).unwrap().len(), 2 << 20);
    ok(
        vstor(&["resize", "-f", "raw", "--shrink", &r, "-512k"]),
        "shrink raw",
    );
    assert_eq!(std::fs::metadata(&r).unwrap().len(), 1536 << 10);
}
