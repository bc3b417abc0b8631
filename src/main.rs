use std::hint::black_box;
fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..3 {
            let n = 20_000_000u32;
            let t = std::time::Instant::now();
            for _ in 0..n {
                black_box(tokio::time::Instant::now());
            }
            let tok = t.elapsed().as_nanos() as f64 / n as f64;
            let t = std::time::Instant::now();
            for _ in 0..n {
                black_box(std::time::Instant::now());
            }
            let std_ = t.elapsed().as_nanos() as f64 / n as f64;
            println!("tokio {tok:.1} ns, std {std_:.1} ns");
        }
    });
}
