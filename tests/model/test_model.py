import pytest
import torch

import dskd
from dskd.model.losses import pyramid_loss
from dskd.model.maps import fuse, per_scale_maps


@pytest.mark.parametrize("backbone", dskd.list_backbones())
@pytest.mark.parametrize("variant", dskd.VARIANTS)
def test_shapes_every_backbone_variant_size(backbone, variant):
    model = dskd.build_model(backbone, variant, pretrained=False).eval()
    for size in (64, 128, 256):
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            teacher, students = model(x)
            out = model.anomaly_map(x)
        assert set(students) == set(model.students)
        for feats in students.values():
            assert [f.shape for f in feats] == [t.shape for t in teacher]
        assert out.map.shape == (1, 1, size, size) and out.score.shape == (1,)
        assert set(out.per_student) == set(model.students)
        assert all(m.shape == (1, 1, size, size) for m in out.per_student.values())
        assert all(m.shape == (1, 3, size, size) for m in out.per_scale.values())
        assert torch.isfinite(out.map).all()


def test_loss_zero_when_student_matches_teacher():
    feats = [torch.randn(2, c, s, s) for c, s in ((24, 16), (40, 8), (112, 4))]
    assert pyramid_loss(feats, [f.clone() for f in feats]).item() == pytest.approx(0.0, abs=1e-6)
    assert pyramid_loss(feats, [3.0 * f for f in feats]).item() == pytest.approx(0.0, abs=1e-6)  # direction only
    assert pyramid_loss(feats, [-f for f in feats]).item() == pytest.approx(6.0, abs=1e-5)
    assert pyramid_loss(feats, [-f for f in feats], kind="flat_cosine").item() == pytest.approx(6.0, abs=1e-5)


@pytest.mark.parametrize("variant", dskd.VARIANTS)
def test_one_step_lowers_loss_and_keeps_teacher(variant):
    model = dskd.build_model(variant=variant).train()
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.rand(4, 3, 64, 64)
    before = model.loss(x)
    assert before["total"].requires_grad and set(before) == {*model.students, "total"}
    before["total"].backward()
    opt.step()
    with torch.no_grad():
        after = model.loss(x)["total"].item()
    assert after < before["total"].item()
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


@pytest.mark.parametrize("df_input", ["raw", "predicted"])
def test_students_interact_only_through_se_fed_df(df_input):
    x = torch.rand(2, 3, 64, 64)
    for source, detach, expect_grad in (("se", False, True), ("teacher", False, False), ("se", True, False),
                                        ("both", False, True), ("both", True, False)):
        model = dskd.build_model(variant="dskd", pretrained=False, df_source=source, df_detach=detach,
                                 df_input=df_input)
        model.loss(x)["sd"].backward()
        se_grads = [p.grad for p in model.se.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert bool(se_grads) == expect_grad, (source, detach)
        head_grads = [p.grad for p in model.se.heads.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert bool(head_grads) == (expect_grad and df_input == "predicted"), (source, detach)  # heads feed DF
        assert model.loss(x)["sd"].requires_grad  # Sd itself still trains


def test_df_source_both_feeds_teacher_and_se_features_per_scale():
    torch.manual_seed(0)
    model = dskd.build_model(variant="dskd", pretrained=False, df_source="both").eval()
    x = torch.rand(2, 3, 64, 64)
    seen = {}
    model.embed.register_forward_pre_hook(lambda module, args: seen.update(feats=args[0]))
    with torch.no_grad():
        model(x)
        teacher = model.teacher(model.teacher.normalize(x))
        se_raw, _ = model.se(model.teacher.normalize(x))
    for got, t, s in zip(seen["feats"], teacher, se_raw, strict=True):
        assert torch.equal(got, torch.cat([t, s], 1))


def test_df_input_predicted_is_raw_when_teacher_and_student_widths_match():
    """With a ResNet18 teacher Se's heads are identities, so both readings of Se are the same network."""
    torch.manual_seed(0)
    raw = dskd.build_model(backbone="resnet18", variant="dskd", pretrained=False, df_input="raw").eval()
    predicted = dskd.build_model(backbone="resnet18", variant="dskd", pretrained=False, df_input="predicted").eval()
    predicted.load_state_dict(raw.state_dict())
    x = torch.rand(2, 3, 64, 64)
    for a, b in zip(raw(x)[1]["sd"], predicted(x)[1]["sd"], strict=True):
        torch.testing.assert_close(a, b)
    lite = dskd.build_model(variant="dskd", pretrained=False, df_input="predicted")
    assert lite.embed.down2[0].in_channels == lite.teacher.channels[1] != 128  # reads the 1x1 heads' outputs


def test_map_is_zero_for_identical_features_and_peaks_at_perturbation():
    feats = [torch.randn(1, c, s, s) for c, s in ((24, 32), (40, 16), (112, 8))]
    zero = per_scale_maps(feats, feats, (128, 128))
    assert zero.abs().max().item() < 1e-5
    student = [f.clone() for f in feats]
    student[0][0, :, 20, 8] = -student[0][0, :, 20, 8]  # one feature vector flipped at stride 4
    out = fuse({"se": per_scale_maps(feats, student, (128, 128))}, sigma=4.0)
    y, x = divmod(out.map[0, 0].argmax().item(), 128)
    assert abs(y - (20 * 4 + 1.5)) <= 3 and abs(x - (8 * 4 + 1.5)) <= 3
    assert out.score.item() == pytest.approx(out.map.max().item())


def test_fusion_options_and_top_share_score():
    per_scale = {"se": torch.rand(2, 3, 32, 32), "sd": torch.rand(2, 3, 32, 32)}
    s = fuse(per_scale, sigma=0)
    torch.testing.assert_close(s.map, per_scale["se"].sum(1, keepdim=True) + per_scale["sd"].sum(1, keepdim=True))
    p = fuse(per_scale, scale_fusion="product", student_fusion="max", sigma=0, scales=[0, 2])
    expected = torch.maximum(per_scale["se"][:, [0, 2]].prod(1), per_scale["sd"][:, [0, 2]].prod(1)).unsqueeze(1)
    torch.testing.assert_close(p.map, expected)
    k = fuse(per_scale, sigma=0, score_share=0.01)  # 1 % of 1024 pixels: the mean of the 11 largest
    torch.testing.assert_close(k.score, k.map.flatten(1).topk(11).values.mean(1))
    norm = {"se": torch.tensor([[0.5, 0.5, 0.5], [2.0, 2.0, 2.0]])}
    n = fuse({"se": per_scale["se"]}, sigma=0, norm=norm)
    torch.testing.assert_close(n.map, ((per_scale["se"] - 0.5) / 2).sum(1, keepdim=True))
    prod = fuse({"se": per_scale["se"]}, sigma=0, norm=norm, scale_fusion="product")
    torch.testing.assert_close(prod.map, (per_scale["se"] / 2).prod(1, keepdim=True))


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 3, 48, 64), (1, 3, 16, 16), (3, 64, 64)])
def test_bad_images_rejected(shape):
    model = dskd.build_model(variant="se_only", pretrained=False)
    with pytest.raises(ValueError, match="(channels|multiples of 32|B x 3 x H x W)"):
        model.loss(torch.rand(*shape))


def test_bad_names_rejected():
    with pytest.raises(ValueError, match="dskd_no_df"):
        dskd.build_model(variant="triple")
    with pytest.raises(ValueError, match="resnet18"):
        dskd.build_model(backbone="vgg")
    with pytest.raises(ValueError, match="allowed"):
        dskd.build_model(colour="red")
    with pytest.raises(ValueError, match="teacher"):
        dskd.build_model(variant="sd_only", df_source="se")


def test_count_parameters():
    model = dskd.build_model(variant="se_only", pretrained=False)
    counts = dskd.count_parameters(model)
    assert counts["frozen"] == sum(p.numel() for p in model.teacher.parameters())
    assert counts["trainable"] == sum(p.numel() for p in model.se.parameters())


def _reference_anomaly_map(model, x):
    """A slow, independent rendering of the documented pipeline: explicit normalization, dense 2-D Gaussian."""
    import math

    import torch.nn.functional as F

    with torch.no_grad():
        teacher, students = model(x)
        total = 0
        for i, name in enumerate(model.students):
            per_student = 0
            for j, (t, s) in enumerate(zip(teacher, students[name], strict=True)):
                tn = t / t.norm(dim=1, keepdim=True).clamp_min(1e-6)
                sn = s / s.norm(dim=1, keepdim=True).clamp_min(1e-6)
                d = 1 - (tn * sn).sum(1, keepdim=True)
                d = F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
                loc, spread = model.map_norm_stats[i, 0, j], model.map_norm_stats[i, 1, j]
                per_student = per_student + (d - loc) / spread
            total = total + per_student
        sigma = model.config.sigma
        r = int(4 * sigma + 0.5)
        g = torch.tensor([math.exp(-0.5 * (k / sigma) ** 2) for k in range(-r, r + 1)])
        kernel = (g[:, None] * g[None, :]) / (g.sum() ** 2)
        return F.conv2d(F.pad(total, (r, r, r, r), mode="reflect"), kernel[None, None])


@pytest.mark.parametrize("keep_students", [True, False])
@pytest.mark.parametrize("variant", ["dskd", "se_only"])
def test_fast_map_pipeline_matches_reference(variant, keep_students):
    model = dskd.build_model(variant=variant, pretrained=False).eval()
    model.map_norm_stats[:, 0] = torch.rand_like(model.map_norm_stats[:, 0]) * 0.1  # fitted-looking statistics
    model.map_norm_stats[:, 1] = 0.5 + torch.rand_like(model.map_norm_stats[:, 1])
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        fast = model.anomaly_map(x, keep_students=keep_students)
    assert set(fast.per_student) == (set(model.students) if keep_students else set())
    reference = _reference_anomaly_map(model, x)
    torch.testing.assert_close(fast.map, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.score, reference.flatten(1).amax(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale_fusion", ["sum", "mean", "product"])
@pytest.mark.parametrize("student_fusion", ["sum", "mean", "max"])
def test_native_shortcut_equals_fusing_upsampled_maps(scale_fusion, student_fusion):
    """Summing students and scales before upsampling and smoothing (linear fusions) gives the same map and score
    as fusing the upsampled maps; non-linear fusions take the full path."""
    from dskd.model.maps import fuse_native, upsample_scales

    g = torch.Generator().manual_seed(0)
    native = {n: [torch.rand(2, 1, r, r + 4, generator=g) for r in (24, 12, 6)] for n in ("se", "sd")}
    norm = {n: torch.stack([torch.rand(3, generator=g) * 0.2, 0.5 + torch.rand(3, generator=g)]) for n in native}
    valid = torch.ones(2, 96, 112, dtype=torch.bool)
    valid[1, 80:] = False
    options = dict(scale_fusion=scale_fusion, student_fusion=student_fusion, sigma=2.0, scales=[0, 2], norm=norm,
                   valid=valid, score_share=0.01)
    full = fuse({n: upsample_scales(m, (96, 112)) for n, m in native.items()}, **options)
    short = fuse_native(native, (96, 112), keep_students=False, **options)
    torch.testing.assert_close(short.map, full.map, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(short.score, full.score, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("size", "native_sizes", "sigma"), [
    ((96, 112), ((24, 28), (12, 14), (6, 7)), 2.0),  # non-square
    ((256, 256), ((64, 64), (32, 32), (16, 16)), 4.0),  # the speed benchmark's
    ((20, 30), ((5, 7), (3, 3)), 4.0),  # smaller than the Gaussian: cut as reflect padding needs
    ((37, 53), ((7, 11),), 0.0),  # no smoothing, uneven factors
])
def test_upsampling_and_smoothing_as_matrix_products(size, native_sizes, sigma):
    from dskd.model.maps import gaussian_blur, upsample_scales, upsample_smooth_sum

    g = torch.Generator().manual_seed(0)
    native = [torch.rand(2, 1, h, w, generator=g) for h, w in native_sizes]
    expected = gaussian_blur(upsample_scales(native, size).sum(1, keepdim=True), sigma)
    torch.testing.assert_close(upsample_smooth_sum(native, size, sigma), expected, rtol=1e-5, atol=1e-5)


def test_cosine_distance_is_torchs_cosine_similarity():
    import torch.nn.functional as F

    from dskd.model.losses import channel_norm, cosine_distance

    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 16, 5, 6, generator=g), torch.randn(2, 16, 5, 6, generator=g)
    t[0, :, 0, 0] = 0  # a zero vector: both floor its norm at eps
    expected = 1 - F.cosine_similarity(t, s, dim=1, eps=1e-6)
    torch.testing.assert_close(cosine_distance(t, s), expected)
    torch.testing.assert_close(cosine_distance(t, s, channel_norm(t)), expected)
    s.requires_grad_(True)  # the training loss: the same gradients as well
    mine = torch.autograd.grad(cosine_distance(t, s).sum(), s)[0]
    torchs = torch.autograd.grad((1 - F.cosine_similarity(t, s, dim=1, eps=1e-6)).sum(), s)[0]
    torch.testing.assert_close(mine, torchs)


def _randomize_batchnorm(model):
    """Fitted-looking norm layers, so that folding them is not the identity it would be at initialization."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
@pytest.mark.parametrize("variant", dskd.VARIANTS)
def test_for_inference_keeps_maps_and_refuses_training(backbone, variant):
    import copy

    from dskd.model.network import fold_batchnorm

    model = dskd.build_model(backbone, variant, pretrained=False)
    _randomize_batchnorm(model)
    model.eval()
    model.map_norm_stats[:, 1] = 0.5 + torch.rand_like(model.map_norm_stats[:, 1])
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        before = model.anomaly_map(x)
    fast = copy.deepcopy(model).for_inference()
    with torch.inference_mode():
        after = fast.anomaly_map(x)
    plain_norms = [m for m in fast.modules() if type(m) is torch.nn.BatchNorm2d]
    assert not plain_norms, "every conv -> BatchNorm2d pair of the students (and a ResNet teacher) is folded"
    assert fast.se is None or fast.se.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(after.map, before.map, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after.score, before.score, rtol=1e-4, atol=1e-4)
    for name in model.students:
        torch.testing.assert_close(after.per_scale[name], before.per_scale[name], rtol=1e-4, atol=1e-5)
    assert fold_batchnorm(fast) == 0  # nothing left to fold: folding twice would scale the weights twice
    with pytest.raises(dskd.DskdError, match="for_inference"):
        fast.train()


def test_image_score_ignores_the_padding():
    per_scale = {"se": torch.rand(2, 3, 32, 32)}
    per_scale["se"][:, :, :8] = 100.0  # a hot padded band on top
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :8] = False
    masked = fuse(per_scale, sigma=0, valid=valid)
    assert torch.allclose(masked.score, masked.map[:, 0, 8:].flatten(1).amax(1))
    assert (fuse(per_scale, sigma=0).score > 100).all()  # without `valid` the band decides the score


def test_image_score_share_means_the_same_at_every_size():
    """A share of the map, not a pixel count: the map at twice the resolution (each pixel four times) scores the
    same; where padding leaves fewer pixels than the share asks for, the score is the mean of those shown."""
    from dskd.model.maps import image_score

    amap = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    twice = amap.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(image_score(twice, 0.05), image_score(amap, 0.05))
    assert not torch.allclose(image_score(amap, 0.05), image_score(amap, 0.0))
    assert (image_score(amap, 0.05) < image_score(amap, 0.0)).all()
    valid = torch.zeros(3, 64, 64, dtype=torch.bool)
    valid[:, :4, :4] = True  # 16 pixels shown, the share asks for 205
    masked = fuse({"se": amap.expand(-1, 3, -1, -1)}, sigma=0, valid=valid, score_share=0.05)
    torch.testing.assert_close(masked.score, masked.map[:, 0, :4, :4].flatten(1).mean(1))
