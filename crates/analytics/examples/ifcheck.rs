use portcullis_analytics::{IsolationForest, N_FEATURES};
fn main() {
    let mut data = Vec::new();
    let mut s = 1u64;
    for _ in 0..512 {
        let mut f = [0.0f32; N_FEATURES];
        for v in f.iter_mut().take(8) {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = (s >> 40) as f32 / 16777216.0;
        }
        data.push(f);
    }
    let t = std::time::Instant::now();
    let mut forest = IsolationForest::train(&data, 50, 128, 1);
    for _ in 0..99 {
        forest = IsolationForest::train(&data, 50, 128, 1);
    }
    println!("train {:?}", t.elapsed() / 100);
    let t = std::time::Instant::now();
    let mut acc = 0.0;
    for x in data.iter().cycle().take(1_000_000) {
        acc += forest.score(x);
    }
    println!("score {:?} {acc}", t.elapsed() / 1_000_000);
}
