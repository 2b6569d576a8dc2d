"""Retrieval metrics and baselines on hand-made codes and graphs."""

import jraph
import numpy as np

import pytest

from hnn_jax import schema
from hnn_jax.training import baselines, evaluate
from hnn_jax.errors import HNNError


def test_average_precision_and_fair_ties():
    rng = np.random.default_rng(0)
    relevant = np.array([True, False, True, False])
    # ranking 0 (rel), 1, 2 (rel), 3: AP = (1/1 + 2/3) / 2
    assert np.isclose(evaluate.average_precision(np.array([0, 1, 2, 3]), relevant, rng), (1 + 2 / 3) / 2)
    # all tied: random order; the expected AP of 2 relevant among 4 is 0.6458...
    tied = evaluate.average_precision(np.zeros(4), relevant, np.random.default_rng(1))
    assert 0.55 < tied < 0.75
    assert evaluate.precision_at_1(np.array([1, 1, 2]), np.array([True, False, True])) == 0.5
    # first relevant item: 1 strictly nearer, then 3 tied of which 1 relevant -> 1 + 4/2
    assert evaluate.first_relevant_rank(np.array([3, 0, 1, 1, 1]), np.array([0, 0, 1, 0, 0], bool)) == 3.0
    # two relevant items tied at the top: the first of them is always first
    assert evaluate.first_relevant_rank(np.array([2, 0, 0]), np.array([0, 1, 1], bool)) == 1.0
    # 1 relevant among 3 tied at the top: 2 on average
    assert evaluate.first_relevant_rank(np.array([0, 0, 0, 5]), np.array([0, 1, 0, 1], bool)) == 2.0


def test_hamming_matrix():
    a = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], np.uint8)
    np.testing.assert_array_equal(evaluate.hamming(a, a), [[0, 2], [2, 0]])


def _rows(spec):
    return [dict(family=f, arch=a, parent=p, transform=t) for f, a, p, t in spec]


def test_perfect_codes_score_one_and_shuffled_codes_do_not():
    spec = [("f1", "a1", "p1", "original"), ("f1", "a1", "p1", "fp16"), ("f1", "a1", "p2", "original"),
            ("f1", "a2", "p3", "original"), ("f2", "b1", "p4", "original"), ("f2", "b1", "p4", "int8"),
            ("f2", "b2", "p5", "original")]
    rows = _rows(spec)
    # bits 0-3: family, 4-7: parent; derivatives equal their parent
    family_code = {"f1": [0, 0, 0, 0], "f2": [1, 1, 1, 1]}
    parent_code = {"p1": [0, 0, 0, 0], "p2": [1, 1, 0, 0], "p3": [0, 0, 1, 1], "p4": [0, 1, 0, 1], "p5": [1, 0, 1, 0]}
    bits = np.array([family_code[r["family"]] + parent_code[r["parent"]] for r in rows], np.uint8)
    res = evaluate.evaluate_codes(bits, rows)
    assert res["family_map"] == 1.0 and res["family_p1"] == 1.0
    assert res["copy_map"] == 1.0 and res["copy_p1"] == 1.0
    assert res["distance_to_original"] == {"fp16": 0.0, "int8": 0.0}
    assert res["family_ap"] == {"f1": 1.0, "f2": 1.0}
    shuffled = evaluate.evaluate_codes(bits[[4, 2, 6, 0, 1, 5, 3]], rows)
    assert shuffled["family_map"] < 0.9 and shuffled["copy_map"] < 0.9
    # the family mAP is the mean of the per-query APs; per family it is that family's queries' mean
    ap = shuffled["family_ap"]
    assert min(ap.values()) < 0.9 and np.isclose(shuffled["family_map"], (3 * ap["f1"] + 2 * ap["f2"]) / 5)


def test_twins_rank_the_exact_twin():
    tv = _rows([("resnet", "resnet50", "tv1", "original"), ("resnet", "resnet18", "tv2", "original"),
                ("vgg", "vgg16", "tv3", "original")])
    keras = _rows([("resnet", "ResNet50", "k1", "original"), ("vgg", "VGG16", "k2", "original")])
    tv_bits = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]], np.uint8)
    keras_bits = np.array([[0, 0, 0, 0], [1, 1, 1, 0]], np.uint8)
    res = evaluate.evaluate_twins(keras_bits, keras, tv_bits, tv)
    assert res["twin_median_rank"] == 1.0 and res["twin_family_map"] == 1.0 and res["twin_queries"] == 2
    # a second init of resnet50 tied with the first: the twin is still found first
    tv2 = tv + _rows([("resnet", "resnet50", "tv4", "original")])
    res = evaluate.evaluate_twins(keras_bits, keras, np.vstack([tv_bits, [[0, 0, 0, 0]]]), tv2)
    assert res["twin_median_rank"] == 1.0
    # both resnet50 inits tied with resnet18 at the top: 3 tied, 2 relevant -> (3 + 1) / (2 + 1)
    tied = np.array([[0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]], np.uint8)
    res = evaluate.evaluate_twins(keras_bits[:1], keras[:1], tied, tv2)
    assert np.isclose(res["twin_median_rank"], 4 / 3)


def _graph(ops, edges, weight_seed=None):
    n = len(ops)
    nodes = np.zeros((n, schema.NODE_WIDTH), np.float32)
    nodes[:, 0] = ops
    if weight_seed is not None:
        nodes[:, schema.NODE_WEIGHT_PROJ] = np.random.default_rng(weight_seed).standard_normal((n, 16))
    s, r = (np.array(x, np.int32) for x in zip(*edges))
    return jraph.GraphsTuple(nodes=nodes, edges=np.zeros((len(s), schema.EDGE_WIDTH), np.float32),
                             senders=s, receivers=r, n_node=np.array([n]), n_edge=np.array([len(s)]),
                             globals=np.zeros((1, schema.GLOBAL_WIDTH), np.float32))


def test_baselines_see_what_they_are_meant_to_see():
    chain = _graph([1, 2, 14, 2, 14], [(0, 1), (1, 2), (2, 3), (3, 4)], weight_seed=0)
    reordered = _graph([1, 2, 2, 14, 14], [(0, 1), (0, 2), (1, 3), (2, 4)], weight_seed=0)
    other_init = _graph([1, 2, 14, 2, 14], [(0, 1), (1, 2), (2, 3), (3, 4)], weight_seed=1)
    # op histograms ignore wiring; WL does not
    assert np.array_equal(baselines.op_histogram_hash(chain), baselines.op_histogram_hash(reordered))
    assert not np.array_equal(baselines.wl_subtree_hash(chain), baselines.wl_subtree_hash(reordered))
    # structure hashes cannot tell initialisations apart; weight signs can
    assert np.array_equal(baselines.wl_subtree_hash(chain), baselines.wl_subtree_hash(other_init))
    d = np.sum(baselines.weight_sign_hash(chain) != baselines.weight_sign_hash(other_init))
    assert d > 10


def test_pr_curve_ends_at_full_recall():
    bits = np.array([[0, 0], [0, 1], [1, 1]], np.uint8)
    relevant = np.array([[True, True, False], [True, True, False], [False, False, True]])
    precision, recall = evaluate.pr_curve(bits, relevant)
    assert recall[-1] == 1.0 and precision[0] == 1.0 and precision[-1] == 1 / 3


def test_architecture_bands_split_separated_relations_in_the_middle_and_overlaps_by_least_error():
    """The architecture part cannot tell a derivative from another initialisation (it reads no
    weights): both are one group, and the same-model band allows what same-architecture does."""
    groups = {"same model": np.array([0, 1, 2]), "same arch": np.array([0, 2, 8]),
              "same family": np.array([20, 22]), "other": np.array([30, 40])}
    assert evaluate.measure_thresholds(groups, 48) == (14, 14, 26)  # middles of 8-19 and 22-29
    # overlapping: 1 of 6 same-architecture pairs at 9, 1 of 2 family pairs at 3: the fit misplaces
    # one share of the least weight; later thresholds never fall below earlier ones
    groups = {"same model": np.array([0, 1, 2]), "same arch": np.array([0, 1, 9]),
              "same family": np.array([3, 12]), "other": np.array([48])}
    bounds = evaluate.measure_thresholds(groups, 48)
    assert bounds[0] == bounds[1] == 2 and bounds[1] <= bounds[2] < 48
    with pytest.raises(HNNError, match="no pairs of other"):
        evaluate.measure_thresholds({**groups, "other": np.array([], int)}, 48)


def test_verdicts_need_both_parts_in_their_bands():
    from hnn_jax.hashcode import Bands, WeightBand

    bands = Bands((1, 1, 4), {16: WeightBand(3, 1e6, 1e6, 100)})
    rows = _rows([("f", "a", "p1", "original"), ("f", "a", "p1", "fp16"), ("f", "a", "p2", "original"),
                  ("g", "b", "p3", "original")])
    bits = np.zeros((4, 24), np.uint8)  # 8 architecture bits, 16 weight bits
    bits[1, 8:10] = 1    # a copy: 2 weight bits from its original
    bits[2, 8:18] = 1    # another init: the same architecture, weights 10 and 8 bits away
    bits[3, :8] = 1      # another family
    table = evaluate.verdicts(bits, rows, bands, 8)
    assert table["same model (derivative)"]["n"] == 1
    assert table["same model (derivative)"]["called"]["same-model"] == 1.0
    assert table["same architecture, other init"]["called"]["same-architecture"] == 1.0
    assert table["other family"]["called"]["unrelated"] == 1.0
    assert "same family, other architecture" not in table  # no such pair here
