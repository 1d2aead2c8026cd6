//! Moving step-graph state between per-user states (as the daemon holds them, f32 or f16) and batch
//! tensors (as ONNX Runtime takes them, f32), converting on the way. A state tensor's batch axis
//! need not be the first: a Transformer's key/value cache is [layers, batch, heads, span, head_dim],
//! so a user's slice is `outer` blocks of `inner` floats, one block per leading index.

use super::StateSpec;
use crate::memory::StateTensors;

/// Values per user in each state tensor: the shape a held state must have.
pub fn lengths(specs: &[StateSpec]) -> Vec<usize> {
    specs.iter().map(StateSpec::floats_per_user).collect()
}

/// Stacks the rows' tensor `n` along the spec's batch axis into the front of `batch` (grown when
/// too short, never shrunk: one buffer serves every micro-batch) and returns that part. Each row
/// must hold `spec.floats_per_user()` values for tensor `n`.
pub fn gather<'b>(
    spec: &StateSpec,
    n: usize,
    rows: &[&StateTensors],
    batch: &'b mut Vec<f32>,
) -> &'b [f32] {
    let (outer, inner) = spec.outer_inner();
    let len = outer * inner * rows.len();
    if batch.len() < len {
        batch.resize(len, 0.0);
    }
    let batch = &mut batch[..len];
    for o in 0..outer {
        for (r, row) in rows.iter().enumerate() {
            let at = (o * rows.len() + r) * inner;
            row.read_f32(n, o * inner, &mut batch[at..at + inner]);
        }
    }
    batch
}

/// Writes a batch tensor's rows back into each row's tensor `n`, at that row's precision. Each row
/// must already hold `spec.floats_per_user()` values for tensor `n`.
pub fn scatter(spec: &StateSpec, n: usize, batch: &[f32], rows: &mut [&mut StateTensors]) {
    let (outer, inner) = spec.outer_inner();
    let count = rows.len();
    for o in 0..outer {
        for (r, row) in rows.iter_mut().enumerate() {
            let at = (o * count + r) * inner;
            row.write_f32(n, o * inner, &batch[at..at + inner]);
        }
    }
}

/// Drops each row's oldest entry along `axis` (the spec's `append_axis`) in tensor `n` and appends
/// the row's new entry from `batch` (the graph's output, one entry along the axis).
pub fn append(
    spec: &StateSpec,
    n: usize,
    axis: usize,
    batch: &[f32],
    rows: &mut [&mut StateTensors],
) {
    let dims = spec.dims();
    let (outer, _) = spec.outer_inner();
    // A user's slice: `outer` × `lanes` runs of `len` entries of `entry` floats each, where the
    // axes between the batch axis and `axis` make the lanes.
    let lanes: usize = dims[spec.batch_axis + 1..axis].iter().product();
    let (len, entry): (usize, usize) = (dims[axis], dims[axis + 1..].iter().product());
    let count = rows.len();
    for o in 0..outer {
        for (r, row) in rows.iter_mut().enumerate() {
            for lane in 0..lanes {
                let run = ((o * lanes) + lane) * len * entry;
                let new = ((o * count + r) * lanes + lane) * entry;
                row.shift_in_f32(n, run..run + len * entry, &batch[new..new + entry]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatePrecision;

    fn spec(shape: serde_json::Value, batch_axis: usize) -> StateSpec {
        StateSpec {
            name: "s".into(),
            input: "s".into(),
            output: "s_out".into(),
            dtype: "float32".into(),
            shape: serde_json::from_value(shape).unwrap(),
            batch_axis,
            append_axis: None,
        }
    }

    /// A sliding cache [layers=2, batch, heads=2, span=3, dim=2] stepped with one new entry per
    /// row: each (layer, head) run loses its oldest entry and gains the new one, as if the graph had
    /// returned the whole shifted cache.
    #[test]
    fn append_shifts_each_run_and_equals_scattering_the_shifted_state() {
        let mut s = spec(serde_json::json!([2, "batch", 2, 3, 2]), 1);
        s.append_axis = Some(3);
        assert_eq!((s.floats_per_user(), s.output_floats_per_user()), (24, 8));
        let a: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let b: Vec<f32> = (100..124).map(|v| v as f32).collect();
        // New entries, batch tensor [2, 2 rows, 2, 1, 2]: layer-major, then row, head, dim.
        let new: Vec<f32> = (0..16).map(|v| 1000.0 + v as f32).collect();
        for precision in [StatePrecision::F32, StatePrecision::F16] {
            let mut ra = StateTensors::encode(vec![a.clone()], precision);
            let mut rb = StateTensors::encode(vec![b.clone()], precision);
            append(&s, 0, 3, &new, &mut [&mut ra, &mut rb]);
            // What a graph returning the whole shifted state would have left: shifted by hand.
            let shifted = |old: &[f32], row: usize| -> Vec<f32> {
                let mut out = Vec::new();
                for l in 0..2 {
                    for h in 0..2 {
                        let run = &old[(l * 2 + h) * 6..(l * 2 + h + 1) * 6];
                        out.extend_from_slice(&run[2..]);
                        let at = ((l * 2 + row) * 2 + h) * 2;
                        out.extend_from_slice(&new[at..at + 2]);
                    }
                }
                out
            };
            let expected_a = StateTensors::encode(vec![shifted(&a, 0)], precision);
            let expected_b = StateTensors::encode(vec![shifted(&b, 1)], precision);
            assert_eq!((ra, rb), (expected_a, expected_b), "{precision:?}");
        }
    }

    #[test]
    fn gather_and_scatter_are_inverse_for_an_inner_batch_axis() {
        // [layers=2, batch, 3]: user r's slice is [l0: 3 floats, l1: 3 floats].
        let s = spec(serde_json::json!([2, "batch", 3]), 1);
        assert_eq!(s.floats_per_user(), 6);
        let a = StateTensors::F32(vec![(0..6).map(|v| v as f32).collect()]);
        let b = StateTensors::F32(vec![(10..16).map(|v| v as f32).collect()]);
        // A longer buffer from an earlier, larger batch: only its front is the batch.
        let mut buffer = vec![-1.0; 20];
        let batch = gather(&s, 0, &[&a, &b], &mut buffer).to_vec();
        assert_eq!(
            batch,
            vec![0., 1., 2., 10., 11., 12., 3., 4., 5., 13., 14., 15.]
        );
        assert_eq!(buffer.len(), 20);
        let mut a2 = StateTensors::zeros([6], StatePrecision::F32);
        let mut b2 = StateTensors::zeros([6], StatePrecision::F32);
        scatter(&s, 0, &batch, &mut [&mut a2, &mut b2]);
        assert_eq!((a2, b2), (a, b));
    }

    #[test]
    fn leading_batch_axis_is_plain_concatenation() {
        let s = spec(serde_json::json!(["batch", 4]), 0);
        let a = StateTensors::F32(vec![vec![1.0; 4]]);
        let b = StateTensors::F32(vec![vec![2.0; 4]]);
        let mut buffer = Vec::new();
        assert_eq!(
            gather(&s, 0, &[&a, &b], &mut buffer),
            [[1.0; 4], [2.0; 4]].concat()
        );
    }

    /// f16 rows are widened into the batch and narrowed back into place, per tensor: the same
    /// values as converting each row to f32 and back.
    #[test]
    fn half_precision_rows_convert_on_the_way_in_and_out() {
        let s = spec(serde_json::json!([2, "batch", 3]), 1);
        let values: Vec<f32> = vec![0.1, -2.5, 3.0e-3, 7.0, 65504.0, 1.0e-8];
        let mut row = StateTensors::encode(vec![vec![9.0; 2], values.clone()], StatePrecision::F16);
        let mut buffer = Vec::new();
        let widened = gather(&s, 1, &[&row], &mut buffer).to_vec();
        let expected = StateTensors::encode(vec![values], StatePrecision::F16).to_f32();
        assert_eq!(widened, expected[0]);
        let doubled: Vec<f32> = widened.iter().map(|v| v * 2.0).collect();
        scatter(&s, 1, &doubled, &mut [&mut row]);
        assert_eq!(row.precision(), StatePrecision::F16);
        let back = row.to_f32();
        assert_eq!(back[0], vec![9.0; 2], "other tensors untouched");
        assert_eq!(
            back[1],
            StateTensors::encode(vec![doubled], StatePrecision::F16).to_f32()[0]
        );
    }
}
