//! `remora demo`: the newcomer's first command (filled in below).

pub async fn run(_requests: u32) -> i32 {
    eprintln!("demo: not built yet");
    1
}
