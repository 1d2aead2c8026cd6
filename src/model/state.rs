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
