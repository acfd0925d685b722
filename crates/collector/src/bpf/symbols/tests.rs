//! Tests of the kernel symbol names: fixtures in this machine's kallsyms shape, and its own.

use super::*;

const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff822467c0 T __sched_text_start
ffffffff82246800 T __schedule
ffffffff82247000 T schedule
ffffffff8224f4e2 T __sched_text_end
ffffffff8224f4f0 T __lock_text_start
ffffffff82250f71 T __lock_text_end
ffffffff81400000 t __iomap_dio_rw
ffffffff81400900 t iomap_dio_rw
ffffffff82300000 d some_data
ffffffffc0a01230 t ext4_file_write_iter\t[ext4]
";

/// `Symbols` over `text` as its kallsyms (the directory holds the file while the test runs).
fn open(text: &str) -> (tempfile::TempDir, Symbols) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("kallsyms");
    std::fs::write(&p, text).unwrap();
    (dir, Symbols::open(p))
}

#[test]
fn bounds_of_this_machines_kallsyms_shape() {
    let b = bounds(KALLSYMS.as_bytes());
    assert_eq!(b.sched, (0xffffffff822467c0, 0xffffffff8224f4e2));
    assert_eq!(b.lock, (0xffffffff8224f4f0, 0xffffffff82250f71));
    assert!(b.known());
    let hidden: String = KALLSYMS
        .lines()
        .map(|l| format!("0000000000000000{}\n", &l[16..]))
        .collect();
    assert!(
        !bounds(hidden.as_bytes()).known(),
        "addresses hidden: zeros"
    );
}

#[test]
fn resolves_each_address_to_the_text_symbol_below_it_in_one_pass() {
    let wanted = [
        0xffffffff81400042, // in __iomap_dio_rw
        0xffffffff81400901, // iomap_dio_rw+1
        0xffffffff82246810, // __schedule
        0xffffffff82300010, // past some_data (data is skipped): the text symbol below
        0xffffffffc0a01240, // a module function
        0x10,               // below everything
    ];
    let mut sorted = wanted.to_vec();
    sorted.sort_unstable();
    let got = resolve(KALLSYMS.as_bytes(), &sorted, false);
    let of = |ip: u64| got[sorted.iter().position(|&w| w == ip).unwrap()].clone();
    let f = |name: &str, start: u64, end: u64| Some((name.to_string(), start, end));
    assert_eq!(
        of(0xffffffff81400042),
        f("__iomap_dio_rw", 0xffffffff81400000, 0xffffffff81400900),
        "its function, and where the next begins"
    );
    assert_eq!(
        of(0xffffffff81400901),
        f("iomap_dio_rw", 0xffffffff81400900, 0xffffffff822467c0)
    );
    assert_eq!(
        of(0xffffffff82246810),
        f("__schedule", 0xffffffff82246800, 0xffffffff82247000)
    );
    assert_eq!(of(0xffffffffc0a01240).unwrap().0, "ext4_file_write_iter");
    assert_eq!(
        of(0xffffffffc0a01240).unwrap().2,
        u64::MAX,
        "the last symbol"
    );
    assert_eq!(of(0x10), None);
    assert_eq!(of(0xffffffff82300010).unwrap().0, "__lock_text_end");
}

#[test]
fn lazy_names_come_after_a_pass() {
    let (_dir, mut s) = open(KALLSYMS);
    let t = Instant::now();
    assert_eq!(s.wchan(0xffffffff81400042), None, "queued");
    assert_eq!(&*s.frame(0xffffffff81400042), "0xffffffff81400042");
    assert!(s.due(t));
    s.pass(t);
    assert!(!s.due(t));
    assert_eq!(
        s.wchan(0xffffffff81400042).as_deref(),
        Some("__iomap_dio_rw")
    );
    assert_eq!(&*s.frame(0xffffffff81400042), "__iomap_dio_rw+0x42");
    // Another address in a function already met needs no pass.
    assert_eq!(&*s.frame(0xffffffff814000a0), "__iomap_dio_rw+0xa0");
    assert!(!s.due(t + PASS_EVERY));
    // Something new waits for the next pass, PASS_EVERY later.
    assert_eq!(s.wchan(0xffffffff82246810), None);
    assert!(!s.due(t + Duration::from_secs(1)));
    assert!(s.due(t + PASS_EVERY));
    s.pass(t + PASS_EVERY);
    assert_eq!(s.wchan(0xffffffff82246810).as_deref(), Some("__schedule"));
    // An address no text symbol covers is unknown, and never asked again.
    assert_eq!(s.wchan(0x10), None);
    s.pass(t + PASS_EVERY * 2);
    assert_eq!(s.wchan(0x10).as_deref(), Some("unknown"));
    assert!(!s.due(t + PASS_EVERY * 3));
}

/// After a costly pass, a new wait channel of a short episode waits for the budget, while a
/// long episode's frame or wait channel is named at the next PASS_EVERY.
#[test]
fn a_long_episode_does_not_wait_for_the_budget() {
    let (_dir, mut s) = open(KALLSYMS);
    let t = Instant::now();
    s.wchan(0xffffffff81400042);
    s.pass(t);
    // As if that pass had cost 27.5 ms at the 0.05 % budget.
    s.next_pass = Some(t + Duration::from_secs(55));
    assert_eq!(s.wchan(0xffffffff82246810), None);
    assert!(!s.due(t + PASS_EVERY), "a short episode's name waits");
    assert!(s.due(t + Duration::from_secs(55)));
    assert_eq!(s.wchan_soon(0xffffffff81400900), None);
    assert!(
        !s.due(t + Duration::from_secs(1)),
        "never closer than PASS_EVERY"
    );
    assert!(s.due(t + PASS_EVERY), "a long episode's name comes soon");
    s.pass(t + PASS_EVERY);
    assert_eq!(s.wchan(0xffffffff81400900).as_deref(), Some("iomap_dio_rw"));
    assert_eq!(s.wchan(0xffffffff82246810).as_deref(), Some("__schedule"));
    assert_eq!(&*s.frame(0xffffffff81400901), "iomap_dio_rw+0x1");
}

/// Bytes a pass read, one at a time (so nothing is read ahead of what it used).
struct Counted<'a>(&'a [u8], std::rc::Rc<std::cell::Cell<usize>>);
impl std::io::Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.set(self.1.get() + n);
        Ok(n)
    }
}
fn counted(text: &str) -> (impl BufRead + '_, std::rc::Rc<std::cell::Cell<usize>>) {
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let r = std::io::BufReader::with_capacity(1, Counted(text.as_bytes(), read.clone()));
    (r, read)
}

/// The shape of this machine's kallsyms: the kernel's text in address order, then data,
/// then modules and trampolines above it.
const SORTED: &str = "\
ffffffff81000000 T _stext
ffffffff81000080 T entry_SYSCALL_64
ffffffff815a5390 t folio_wait_bit_common
ffffffff815b4af0 T folio_wait_writeback
ffffffff81790590 T __iomap_dio_rw
ffffffff81790f00 T iomap_dio_rw
ffffffff81b51ff0 T blk_mq_get_tag
ffffffff822467c0 T __sched_text_start
ffffffff82247880 T io_schedule
ffffffff8224f4e2 T __sched_text_end
ffffffff8224f4f0 T __lock_text_start
ffffffff82250f71 T __lock_text_end
ffffffff82258780 T _etext
ffffffff82400000 D __start_rodata
ffffffffc0a01230 t ext4_file_write_iter\t[ext4]
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
";

#[test]
fn a_pass_over_the_kernels_own_text_stops_above_the_highest_address() {
    let b = bounds(SORTED.as_bytes());
    assert_eq!(b.text, (0xffffffff81000000, 0xffffffff82258780));
    let wanted = [0xffffffff815a53a0, 0xffffffff815b4b00];
    let (r, read) = counted(SORTED);
    let got = resolve(r, &wanted, true);
    let stop = SORTED.find("ffffffff81790590").unwrap();
    let through = stop + SORTED[stop..].find('\n').unwrap() + 1;
    assert_eq!(
        read.get(),
        through,
        "read through __iomap_dio_rw, the first symbol above the highest, and no further"
    );
    let full = resolve(SORTED.as_bytes(), &wanted, false);
    assert_eq!(got, full, "the same names and ends as a whole pass");
    assert_eq!(
        got[1],
        Some((
            "folio_wait_writeback".to_string(),
            0xffffffff815b4af0,
            0xffffffff81790590
        ))
    );

    // Out of order before the stop (not what a kernel lists: its binary search needs the
    // order): the order is not trusted, the pass reads it all.
    let shuffled = SORTED.replace(
        "ffffffff81000080 T entry_SYSCALL_64\n",
        "ffffffff815a0000 T moved_up\nffffffff81000080 T entry_SYSCALL_64\n",
    );
    let (r, read) = counted(&shuffled);
    let got = resolve(r, &wanted, true);
    assert_eq!(
        read.get(),
        shuffled.len(),
        "an unsorted run is read to its end"
    );
    assert_eq!(got, resolve(shuffled.as_bytes(), &wanted, false));
}

#[test]
fn a_module_address_makes_the_pass_read_everything() {
    let (_dir, mut s) = open(SORTED);
    let t = Instant::now();
    s.wchan(0xffffffff815a53a0);
    s.wchan(0xffffffffc0a01240);
    s.pass(t);
    assert_eq!(
        s.wchan(0xffffffffc0a01240).as_deref(),
        Some("ext4_file_write_iter"),
        "the module's function, listed after the kernel's text"
    );
    assert_eq!(
        s.wchan(0xffffffff815a53a0).as_deref(),
        Some("folio_wait_bit_common")
    );
}

/// On this machine's own kallsyms: for addresses across the kernel's text, a pass that stops
/// early names each exactly as a whole pass does, and reads less of the file.
#[test]
fn early_passes_agree_with_whole_ones_on_this_kernel() {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        eprintln!("SKIPPED: /proc/kallsyms unreadable here");
        return;
    };
    let b = bounds(text.as_bytes());
    if b.text == (0, 0) || text.starts_with("0000000000000000") {
        eprintln!("SKIPPED: kallsyms hides its addresses or has no _stext/_etext here");
        return;
    }
    // Some function starts and some addresses inside functions, spread over the text.
    let starts: Vec<u64> = text
        .lines()
        .filter_map(|l| parse_line(l.as_bytes()))
        .filter(|&(a, ty, _)| matches!(ty, b't' | b'T') && b.in_text(a))
        .map(|(a, _, _)| a)
        .collect();
    assert!(starts.len() > 1000, "{} text symbols", starts.len());
    for fifth in 1..=5 {
        let hi = starts.len() * fifth / 5 - 1;
        let mut wanted: Vec<u64> = (0..8).map(|k| starts[hi * k / 8] + 3).collect();
        wanted.push(starts[hi]);
        wanted.sort_unstable();
        wanted.dedup();
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let r = std::io::BufReader::new(Counted(text.as_bytes(), read.clone()));
        let early = resolve(r, &wanted, true);
        assert_eq!(
            early,
            resolve(text.as_bytes(), &wanted, false),
            "wanted up to {fifth}/5 of the text"
        );
        eprintln!(
            "up to {fifth}/5 of the text: read {} of {} bytes",
            read.get(),
            text.len()
        );
        if fifth < 5 {
            assert!(read.get() < text.len(), "stopped early");
        }
        assert!(early.iter().all(Option::is_some));
    }
}
