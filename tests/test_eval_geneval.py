"""GenEval: the official rules on synthetic detections with known answers, the transformers detector and the CLIP
colour classifier with tiny random-weight models saved and loaded the real way, and the suite on --images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from miro_eval.geneval import (
    GENEVAL_CLASSES,
    GENEVAL_COLORS,
    ClipColorClassifier,
    ColorOptions,
    Detection,
    DetectorOptions,
    GenEvalRules,
    TransformersDetector,
    compute_iou,
    instance_postprocess,
    judge,
    label_map,
    mmdet_resize_shape,
    object_crops,
    relative_position,
    select_objects,
    summarize,
)


def det(x1, y1, x2, y2, score=0.99, mask=None):
    return Detection((float(x1), float(y1), float(x2), float(y2)), float(score), mask)


def no_colors(objs, cls):  # a colour check must not happen in these cases
    raise AssertionError("colour classifier called")


# -- object selection -------------------------------------------------------------------------------------------
def test_thresholds_are_strict_and_counting_uses_0_9():
    dets = {"dog": [det(0, 0, 1, 1, s) for s in (0.95, 0.3, 0.91, 0.9, 0.31, 0.29)]}
    kept = select_objects(dets, "counting")
    assert [d.score for d in kept["dog"]] == [0.95, 0.91]  # 0.9 is not above 0.9
    kept = select_objects(dets, "two_object")
    assert [d.score for d in kept["dog"]] == [0.95, 0.91, 0.9, 0.31]  # 0.3 is not above 0.3
    assert select_objects({"cat": [det(0, 0, 1, 1, 0.3)]}, "single_object") == {}


def test_at_most_16_objects_most_confident_first():
    dets = {"car": [det(i, 0, i + 1, 1, 0.4 + i / 100) for i in range(20)]}
    kept = select_objects(dets, "single_object")["car"]
    assert len(kept) == 16
    assert [round(d.score, 2) for d in kept] == [round(0.4 + i / 100, 2) for i in range(19, 3, -1)]
    assert len(select_objects(dets, "single_object", GenEvalRules(max_objects=3))["car"]) == 3


def test_overlap_filter_off_by_default_and_iou_convention():
    a, b = det(0, 0, 9, 9, 0.9), det(0, 0, 9, 8, 0.8)  # inclusive pixels: 100 and 90 px, IoU 0.9
    assert compute_iou(a.box, b.box) == pytest.approx(0.9)
    assert compute_iou((0, 0, 9, 9), (0, 0, 4, 9)) == pytest.approx(0.5)  # 50 of 100 pixels (not 40 / 90)
    assert len(select_objects({"cup": [a, b]}, "counting" if False else "colors")["cup"]) == 2
    assert len(select_objects({"cup": [a, b]}, "colors", GenEvalRules(max_overlap=0.85))["cup"]) == 1
    assert len(select_objects({"cup": [a, b]}, "colors", GenEvalRules(max_overlap=0.95))["cup"]) == 2


# -- position ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d, expected", [(2.0, set()), (4.0, set()), (4.01, {"left of"}), (30.0, {"left of"})])
def test_position_margin_is_0_1_of_the_summed_sizes(d, expected):
    # A = [0, 10] and B = [d, d + 10]: the offset d counts only beyond 0.1 * (10 + 10) = 2, and "left of" needs the
    # shrunk offset (d - 2) to exceed half of d, i.e. d > 4
    a, b = det(0, 0, 10, 10), det(d, 0, d + 10, 10)
    assert relative_position(a, b) == expected
    assert relative_position(b, a) == {"right of" for _ in expected}


def test_position_diagonal_and_vertical():
    a, b = det(0, 0, 10, 10), det(0, 40, 10, 50)
    assert relative_position(a, b) == {"above"} and relative_position(b, a) == {"below"}
    # 45 degrees: both axes carry 0.707 of the direction before the margin; with the margin both stay above 0.5
    assert relative_position(det(0, 0, 10, 10), det(100, 100, 110, 110)) == {"left of", "above"}
    # a larger margin removes the relation
    assert relative_position(a, b, margin=1.0) == set()


# -- the verdict ---------------------------------------------------------------------------------------------------
COUNT3 = {"tag": "counting", "include": [{"class": "dog", "count": 3}], "exclude": [{"class": "dog", "count": 4}],
          "prompt": "a photo of three dogs"}


@pytest.mark.parametrize("n, ok, reason", [(3, True, ""), (2, False, "expected dog>=3, found 2"),
                                            (4, False, "expected dog<4, found 4")])
def test_counting_exact_by_include_and_exclude(n, ok, reason):
    objects = select_objects({"dog": [det(i * 20, 0, i * 20 + 10, 10, 0.95) for i in range(n)]}, "counting")
    assert judge(objects, COUNT3, no_colors) == (ok, reason)


def test_counting_threshold_decides_the_count():
    scores = [0.99, 0.95, 0.9]  # the third is not above the counting threshold
    objects = select_objects({"dog": [det(i * 20, 0, i * 20 + 10, 10, s) for i, s in enumerate(scores)]}, "counting")
    assert judge(objects, COUNT3, no_colors) == (False, "expected dog>=3, found 2")


def test_color_uses_the_most_confident_objects_and_stub_scores():
    seen = []

    def stub(objs, cls):  # known answers: colour by the object's score
        seen.append((cls, [o.score for o in objs]))
        return ["red" if o.score > 0.5 else "blue" for o in objs]

    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}
    objects = select_objects({"car": [det(0, 0, 5, 5, 0.45), det(10, 0, 15, 5, 0.8)]}, "colors")
    assert judge(objects, meta, stub) == (True, "")
    assert seen == [("car", [0.8])]  # only the top-`count` object is classified
    meta_blue = {**meta, "include": [{"class": "car", "count": 1, "color": "blue"}]}
    ok, reason = judge(objects, meta_blue, stub)
    assert not ok and reason == "expected blue car>=1, found 0 blue; and 1 red"
    # two cars requested in red: the second (0.45 -> blue) fails it
    meta2 = {**meta, "include": [{"class": "car", "count": 2, "color": "red"}]}
    assert judge(objects, meta2, stub)[0] is False


def test_color_attribution_with_classifier_logits():
    """A stub classifier that returns logits; the colour is their argmax over GenEval's ten colours."""
    logits = {"cat": np.eye(10)[GENEVAL_COLORS.index("white")], "bench": np.eye(10)[GENEVAL_COLORS.index("green")]}

    def stub(objs, cls):
        return [GENEVAL_COLORS[int(np.argmax(logits[cls]))] for _ in objs]

    meta = {"tag": "color_attr", "include": [{"class": "cat", "count": 1, "color": "white"},
                                             {"class": "bench", "count": 1, "color": "green"}]}
    objects = select_objects({"cat": [det(0, 0, 5, 5)], "bench": [det(10, 0, 20, 5)]}, "color_attr")
    assert judge(objects, meta, stub) == (True, "")
    logits["bench"] = np.eye(10)[GENEVAL_COLORS.index("brown")]
    assert judge(objects, meta, stub) == (False, "expected green bench>=1, found 0 green; and 1 brown")


def test_defaults_are_genevals():
    r = GenEvalRules()
    assert (r.threshold, r.counting_threshold, r.max_objects, r.max_overlap, r.position_threshold) == (0.3, 0.9, 16, 1.0, 0.1)
    assert ColorOptions().background == "#999" and ColorOptions().crop is True


def test_position_margin_comes_from_the_rules():
    meta = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    # cat [0, 10], dog [6, 16]: shrunk offset 6 - 2 = 4 > 3 with the 0.1 margin; 6 - 4 = 2 < 3 with 0.2
    objects = select_objects({"dog": [det(6, 0, 16, 10)], "cat": [det(0, 0, 10, 10)]}, "position")
    assert judge(objects, meta, no_colors)[0] is True
    assert judge(objects, meta, no_colors, GenEvalRules(position_threshold=0.2))[0] is False


def test_position_clause_against_matched_group():
    meta = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    left = select_objects({"dog": [det(50, 0, 60, 10)], "cat": [det(0, 0, 10, 10)]}, "position")
    right = select_objects({"dog": [det(0, 0, 10, 10)], "cat": [det(50, 0, 60, 10)]}, "position")
    assert judge(left, meta, no_colors) == (True, "")
    assert judge(right, meta, no_colors) == (False, "expected cat left of target, found right of target")
    only_cat = select_objects({"cat": [det(0, 0, 10, 10)]}, "position")
    ok, reason = judge(only_cat, meta, no_colors)
    assert not ok and reason == "expected dog>=1, found 0\nno target for cat to be left of"


def test_exclude_fails_the_image():
    meta = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "exclude": [{"class": "cat", "count": 1}]}
    assert judge(select_objects({"dog": [det(0, 0, 1, 1)]}, "x"), meta, no_colors) == (True, "")
    objects = select_objects({"dog": [det(0, 0, 1, 1)], "cat": [det(5, 5, 6, 6, 0.5)]}, "x")
    assert judge(objects, meta, no_colors) == (False, "expected cat<1, found 1")


def test_summary_overall_is_the_mean_of_tag_accuracies():
    rows = ([{"tag": "single_object", "correct": True, "group": 0}] * 4
            + [{"tag": "counting", "correct": c, "group": 1 + i // 2} for i, c in enumerate([True, False, False, False])])
    s = summarize(rows)
    assert s["metrics"]["single_object"] == 1.0 and s["metrics"]["counting"] == 0.25
    assert s["metrics"]["overall"] == pytest.approx(0.625)  # not the image mean 5/8
    assert s["metrics"]["correct_images"] == pytest.approx(5 / 8)
    assert s["metrics"]["correct_prompts"] == pytest.approx(2 / 3)  # groups 0 and 1 have a correct image, 2 none
    assert s["counts"] == {"single_object": [4, 4], "counting": [1, 4]}


# -- detector ---------------------------------------------------------------------------------------------------------
def test_mmdet_resize_shapes():
    assert mmdet_resize_shape(512, 512) == (800, 800)
    assert mmdet_resize_shape(1024, 1024) == (800, 800)
    assert mmdet_resize_shape(480, 640) == (800, 1067)  # 640 * 5/3 = 1066.67 -> 1067
    assert mmdet_resize_shape(1000, 3000) == (444, 1333)  # the long side binds: 1333 / 3000


def test_instance_postprocess_known_answer():
    """Two queries, three classes; mask logits +4 inside a known rectangle, -4 outside."""
    cls = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0]])
    masks = torch.full((2, 8, 8), -4.0)
    masks[0, 2:5, 1:4] = 4.0  # rows 2..4, cols 1..3
    masks[1, 0:2, 6:8] = 4.0
    labels, scores, boxes, binary = instance_postprocess(cls, masks, padded_hw=(8, 8), resized_hw=(8, 8),
                                                         original_hw=(8, 8), max_per_image=2)
    order = torch.argsort(scores, descending=True)
    labels, scores, boxes = labels[order], scores[order], boxes[order]
    p = torch.softmax(cls, -1)
    sig = torch.sigmoid(torch.tensor(4.0))
    assert labels.tolist() == [0, 2]
    torch.testing.assert_close(scores, torch.stack([p[0, 0], p[1, 2]]) * sig)
    assert boxes.tolist() == [[1.0, 2.0, 4.0, 5.0], [6.0, 0.0, 8.0, 2.0]]  # x_max + 1, y_max + 1
    # padding is cropped before resizing: a mask in the padded area vanishes
    masks2 = torch.full((2, 8, 8), -4.0)
    masks2[0, :, 6:] = 4.0
    _, s2, b2, _ = instance_postprocess(cls, masks2, padded_hw=(8, 8), resized_hw=(8, 6), original_hw=(8, 6),
                                        max_per_image=2)
    assert float(s2.max()) < 1e-3 and b2.abs().sum() == 0


def test_label_names_are_mapped_not_indexed():
    names = list(GENEVAL_CLASSES)
    coco = {"motorcycle": "motorbike", "airplane": "aeroplane", "computer mouse": "mouse", "tv remote": "remote",
            "computer keyboard": "keyboard", "couch": "sofa", "hair drier": "hair dryer"}
    shuffled = [coco.get(n, n) for n in reversed(names)] + ["banner"]  # reversed order, COCO spellings, a stuff class
    m = label_map(dict(enumerate(shuffled)))
    assert m[0] == "toothbrush" and m[len(names) - 4] == "motorcycle" and len(m) == 80
    assert len(shuffled) - 1 not in m  # 'banner' is not a GenEval class
    with pytest.raises(Exception, match="do not cover GenEval's classes"):
        label_map({0: "cat", 1: "dog"})
    assert label_map({i: f"LABEL_{i}" for i in range(80)}) == dict(enumerate(GENEVAL_CLASSES))  # index fallback


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    labels = {i: n for i, n in enumerate(reversed(GENEVAL_CLASSES))}  # not COCO's order: names must be used
    cfg = Mask2FormerConfig(backbone_config=backbone, hidden_dim=32, num_queries=12, decoder_layers=2, encoder_layers=1,
                            dim_feedforward=32, feature_size=32, mask_feature_size=32, num_attention_heads=2,
                            encoder_feedforward_dim=32, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m2f") / "mask2former"
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    return path


def test_transformers_detector_real_loading(tiny_mask2former):
    d = TransformersDetector(DetectorOptions(model_path=str(tiny_mask2former), min_size=64, max_size=96,
                                             max_per_image=20))
    img = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    out = d.detect(img)
    assert type(d.model).__name__ == "Mask2FormerForUniversalSegmentation" and d.kind == "query"
    assert sum(len(v) for v in out.values()) == 20 and set(out) <= set(GENEVAL_CLASSES)
    # independent check of the wiring: the model's raw outputs through the documented steps
    x, mask, resized = d.preprocess(img)
    assert resized == (77, 64) and tuple(x.shape[-2:]) == (96, 64)  # 48x40 -> scale 64/40 = 1.6; padded to 32
    ref = (np.round(torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), (77, 64),
                                                    mode="bilinear", align_corners=False).numpy()))
    mean = np.array(DetectorOptions().mean).reshape(1, 3, 1, 1)
    std = np.array(DetectorOptions().std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x[:, :, :77, :64].numpy(), (ref - mean) / std, atol=1e-5)
    assert float(x[:, :, 77:].abs().max()) == 0 and mask[0, :77, :64].all() and not mask[0, 77:].any()
    with torch.no_grad():
        res = d.model(pixel_values=x, pixel_mask=mask)
    probs = torch.softmax(res.class_queries_logits[0], -1)[:, :-1]
    best = max(out.items(), key=lambda kv: max(o.score for o in kv[1]))
    top = max(best[1], key=lambda o: o.score)
    # every score is a class probability times a mean mask probability (<= 1): at most the best class probability
    assert top.score <= float(probs.max()) + 1e-6
    for objs in out.values():
        for o in objs:
            assert o.mask.shape == (48, 40)
            if o.mask.any():
                ys, xs = np.where(o.mask)
                assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_box_detector_path_detr(tmp_path):
    """A DETR-family detector (AutoModelForObjectDetection + its processor): boxes, no masks."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 16], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage4"])
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=16,
                     encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=10,
                     id2label=dict(enumerate(GENEVAL_CLASSES)), label2id={n: i for i, n in enumerate(GENEVAL_CLASSES)})
    torch.manual_seed(0)
    DetrForObjectDetection(cfg).save_pretrained(tmp_path / "detr")
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path / "detr")
    d = TransformersDetector(DetectorOptions(model_path=str(tmp_path / "detr")))
    img = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    out = d.detect(img)
    assert d.kind == "boxes" and type(d.model).__name__ == "DetrForObjectDetection"
    got = sorted((cls, o.box, o.score) for cls, objs in out.items() for o in objs)
    assert all(o.mask is None for objs in out.values() for o in objs) and len(got) == 10
    proc = DetrImageProcessor.from_pretrained(tmp_path / "detr")
    with torch.no_grad():
        res = d.model(**proc(images=img, return_tensors="pt"))
    post = proc.post_process_object_detection(res, threshold=0.0, target_sizes=[(48, 40)])[0]
    ref = sorted((GENEVAL_CLASSES[int(lab)], tuple(b), float(s)) for lab, s, b in
                 zip(post["labels"], post["scores"], post["boxes"].tolist()))
    assert [(c, pytest.approx(b), pytest.approx(s)) for c, b, s in ref] == got


def test_detector_missing_weights_error():
    d = TransformersDetector(DetectorOptions(model="nobody/no-such-detector"))
    with pytest.raises(Exception, match="(?s)not available locally.*detector.model_path"):
        d.load()


# -- colour classifier ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "max_position_embeddings": 77},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "clip"
    CLIPModel(cfg).save_pretrained(path)
    return path


def test_object_crops_background_999_and_box():
    from PIL import Image

    img = Image.fromarray(np.full((20, 30, 3), 200, np.uint8))
    mask = np.zeros((20, 30), bool)
    mask[5:10, 4:8] = True
    crops = object_crops(img, [Detection((2.0, 3.0, 12.0, 15.0), 0.9, mask)])
    a = np.asarray(crops[0])
    assert a.shape == (12, 10, 3)  # rows 3..14, cols 2..11
    assert (a[2:7, 2:6] == 200).all()  # inside the mask: the image
    assert (a[0, 0] == 0x99).all() and (a[-1, -1] == 0x99).all()  # outside: #999
    no_mask = object_crops(img, [Detection((2.0, 3.0, 12.0, 15.0), 0.9, None)])[0]
    assert (np.asarray(no_mask) == 200).all()
    kept = object_crops(img, [Detection((2.0, 3.0, 12.0, 15.0), 0.9, mask)], background="original")[0]
    assert (np.asarray(kept) == 200).all()


def test_clip_colour_classifier_matches_independent_computation(tiny_clip):
    import open_clip
    from PIL import Image
    from transformers import CLIPModel

    clf = ClipColorClassifier(ColorOptions(model_path=str(tiny_clip)))
    rng = np.random.default_rng(1)
    img = Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8))
    mask = np.zeros((40, 50), bool)
    mask[10:30, 20:45] = True
    objs = [Detection((0.0, 0.0, 30.0, 20.0), 0.9, None), Detection((10.0, 5.0, 50.0, 40.0), 0.8, mask)]
    logits = clf.logits(img, objs, "dog")
    # independent: the model's text/vision towers and projections, templates formatted by hand
    model = CLIPModel.from_pretrained(str(tiny_clip)).eval()
    tok = open_clip.get_tokenizer("ViT-L-14")
    with torch.no_grad():
        cols = []
        for c in GENEVAL_COLORS:
            texts = [f"a photo of a {c} dog", f"a photo of a {c}-colored dog", f"a photo of a {c} object"]
            t = model.text_projection(model.text_model(input_ids=tok(texts)).pooler_output)
            t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
            cols.append(t / t.norm())
        W = torch.stack(cols, 1)
        tr = open_clip.transform.image_transform(32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                                 std=open_clip.OPENAI_DATASET_STD)
        masked = np.where(mask[..., None], np.asarray(img), np.uint8(0x99))  # the object on #999
        x = torch.stack([tr(img.crop((0, 0, 30, 20))), tr(Image.fromarray(masked).crop((10, 5, 50, 40)))])
        f = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        ref = 100 * (f / f.norm(dim=-1, keepdim=True)) @ W
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    assert clf.classify(img, objs, "dog") == [GENEVAL_COLORS[int(i)] for i in ref.argmax(1)]


# -- the suite on --images --------------------------------------------------------------------------------------------
class StubDetector:
    """Detections read from each image's top-left pixel: red channel = number of dogs found."""

    def detect(self, image):
        n = int(image[0, 0, 0]) // 50
        return {"dog": [det(i * 8, 0, i * 8 + 6, 6, 0.95) for i in range(n)]}


class StubColors:
    def classify(self, image, objects, classname):
        return ["red"] * len(objects)


def _geneval_folder(root, per_prompt):
    from miro_eval.suites import save_png, write_prompt_metadata
    from miro_eval.suites._layout import sample_path

    metas = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
             COUNT3, {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}],
                      "prompt": "a photo of a red dog"}]
    for g, meta in enumerate(metas):
        write_prompt_metadata(root, g, meta)
        for k, n in enumerate(per_prompt[g]):
            img = np.zeros((16, 16, 3), np.uint8)
            img[0, 0, 0] = 50 * n
            save_png(img, sample_path(root, g, k))
    return metas


def test_geneval_suite_on_images_in_geneval_layout(tmp_path):
    from miro_eval.suites.geneval import GenEvalSuite

    # dogs found per image: single_object 1,0 -> 1/2; counting 3,4,3,2 -> 2/4; colors 1 -> 1/1
    _geneval_folder(tmp_path / "imgs", [[1, 0], [3, 4, 3, 2], [1]])
    suite = GenEvalSuite(GenEvalSuite.Config(), detector=StubDetector(), color_classifier=StubColors())
    out = suite.run(tmp_path / "out", images=tmp_path / "imgs")
    m = out["metrics"]
    assert (m["single_object"], m["counting"], m["colors"]) == (0.5, 0.5, 1.0)
    assert m["overall"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert out["num_images"] == 7 and out["num_prompts"] == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"} <= set(rows[0])
    bad = [r for r in rows if r["tag"] == "counting" and not r["correct"]]
    assert sorted(r["reason"] for r in bad) == ["expected dog<4, found 4", "expected dog>=3, found 2"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["overall"] == pytest.approx(2 / 3)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| counting | 0.5 | 2 | 4 |" in report


def test_miro_eval_geneval_images_with_the_transformers_models(tmp_path, tiny_mask2former, tiny_clip, capsys):
    """`miro eval --suite geneval --images DIR` through the real loaders (tiny random weights: any verdict)."""
    from miro_core._plugins import reset_plugins
    from miro_core.cli import main

    _geneval_folder(tmp_path / "imgs", [[1], [3, 2], [1]])
    reset_plugins(None)
    try:
        rc = main(["eval", "--suite", "geneval", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"),
                   "--no-progress", "--set", f"detector.model_path='{tiny_mask2former}'", "--set", "detector.min_size=64",
                   "--set", "detector.max_size=96", "--set", f"color.model_path='{tiny_clip}'",
                   "--set", "rules.threshold=0.0", "--set", "rules.counting_threshold=0.0", "--set", "device='cpu'"])
    finally:
        reset_plugins(None)
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["num_images"] == 4 and set(m["counts"]) == {"single_object", "counting", "colors"}
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    details = json.loads(rows[0]["details"])
    assert details and all(len(b) == 5 for boxes in details.values() for b in boxes)  # x1, y1, x2, y2, score
    assert m["metrics"]["overall"] == pytest.approx(np.mean([m["metrics"][t] for t in m["counts"]]))
