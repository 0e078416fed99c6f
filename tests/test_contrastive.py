import pytest
import torch
import torch.nn.functional as F

from seg_ssl.losses.contrastive import anchor_contrast, directional_contrastive_loss


def reference(feat1, feat2, conf1, conf2, label1, label2, neg, neg_label, t=0.1, thresh=0.75):
    """The formula of the issue written out with the full n x N matrix and explicit loops."""
    def one(a, p, ca, cp, ya):
        total, count = a.new_zeros(()), 0
        for i in range(a.shape[0]):
            if not (cp[i] > thresh and ca[i] < cp[i]):
                continue
            pos = a[i] @ p[i].detach() / t
            terms = [pos] + [a[i] @ neg[j] / t for j in range(neg.shape[0]) if neg_label[j] != ya[i]]
            total = total + (-pos + torch.logsumexp(torch.stack(terms), 0))
            count += 1
        return total / (count + 1e-12)
    return one(feat1, feat2, conf1, conf2, label1) + one(feat2, feat1, conf2, conf1, label2)


def make(n=23, big_n=37, d=8, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    f1 = F.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_()
    f2 = F.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_()
    neg = F.normalize(torch.randn(big_n, d, generator=g), dim=1).requires_grad_()
    c1, c2 = torch.rand(n, generator=g), torch.rand(n, generator=g)
    l1, l2 = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    nl = torch.randint(0, k, (big_n,), generator=g)
    return f1, f2, c1, c2, l1, l2, neg, nl


@pytest.mark.parametrize("temperature", [0.1, 0.02])
def test_matches_the_formula_values_and_gradients(temperature):
    f1, f2, c1, c2, l1, l2, neg, nl = make()
    c2[:5], c1[:5] = 0.9, 0.2  # make sure both directions have anchors
    c1[5:10], c2[5:10] = 0.95, 0.1
    ours = directional_contrastive_loss(f1, f2, c1, c2, l1, l2, neg, nl, temperature, 0.75, chunk=5)
    g_ours = torch.autograd.grad(ours, [f1, f2])
    ref = reference(f1, f2, c1, c2, l1, l2, neg.detach(), nl, t=temperature)
    g_ref = torch.autograd.grad(ref, [f1, f2])
    torch.testing.assert_close(ours, ref.float(), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):  # float32 rounding grows like 1/t
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_gradient_only_into_the_less_confident_side_and_never_the_negatives():
    f1, f2, c1, c2, l1, l2, neg, nl = make()
    c1[:], c2[:] = 0.3, 0.9  # crop 2 always more confident: only L1, anchors in crop 1
    loss = directional_contrastive_loss(f1, f2, c1, c2, l1, l2, neg, nl)
    loss.backward()
    assert f1.grad.abs().sum() > 0
    assert f2.grad is None or f2.grad.abs().sum() == 0
    assert neg.grad is None


def test_empty_masks_give_zero_and_a_graph():
    f1, f2, c1, c2, l1, l2, neg, nl = make()
    c1[:], c2[:] = 0.5, 0.5  # nobody above the threshold
    loss = directional_contrastive_loss(f1, f2, c1, c2, l1, l2, neg, nl)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert f1.grad.abs().sum() == 0


@pytest.mark.parametrize("chunk", [1, 7, 37, 1000])
@pytest.mark.parametrize("temperature", [0.1, 0.01])  # fixed shift, and the running-max path
def test_chunked_equals_unchunked(chunk, temperature):
    f1, f2, c1, c2, l1, l2, neg, nl = make(n=50, big_n=64, seed=3)
    full = anchor_contrast(f1, f2.detach(), l1, neg, nl, temperature, chunk=10_000)
    part = anchor_contrast(f1, f2.detach(), l1, neg, nl, temperature, chunk=chunk)
    torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-4)
    g_full = torch.autograd.grad(full.sum(), f1)[0]
    g_part = torch.autograd.grad(part.sum(), f1)[0]
    torch.testing.assert_close(g_part, g_full, rtol=1e-4, atol=1e-3 * 0.1 / temperature)


def test_stable_at_low_temperature_and_all_negatives_masked():
    f1, f2, c1, c2, l1, l2, neg, nl = make()
    per = anchor_contrast(f1, f2.detach(), l1, neg, nl, temperature=0.001)
    assert torch.isfinite(per).all()
    same = anchor_contrast(f1, f2.detach(), torch.zeros_like(l1), neg, torch.zeros_like(nl))
    torch.testing.assert_close(same, torch.zeros_like(same))  # only the positive left: log(1) = 0


def test_half_precision_inputs_accumulate_in_float32():
    f1, f2, c1, c2, l1, l2, neg, nl = make(n=40, big_n=50)
    ref = anchor_contrast(f1, f2.detach(), l1, neg, nl)
    half = anchor_contrast(f1.detach().bfloat16().requires_grad_(), f2.detach().bfloat16(), l1,
                           neg.detach().bfloat16(), nl)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, ref, rtol=0.05, atol=0.05)
    a = f1.detach().bfloat16().requires_grad_()
    anchor_contrast(a, f2.detach().bfloat16(), l1, neg.detach().bfloat16(), nl).sum().backward()
    assert a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad.float()).all()
