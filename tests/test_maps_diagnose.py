"""HRV Diagnose and the map node's auto concept on an engineered UNet whose heads provably attend to the words of
known concepts (harness/engineered.py): the word of a planted concept is read as that concept first."""
import pytest
import torch
from harness.comfy_models import tokenizer_clip
from harness.engineered import engineer_head_preferences
from harness.tiny_pipeline import tiny_sd1_model

from hrv.comfy_host import import_pack
from hrv.format.concepts import default_concept_names
from hrv.format.layout import known_layout
from scripts.demo.unets import build_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "a photo of a zebra in a field"
WORD = "zebra"


@pytest.fixture(scope="module")
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def engineered(pack):
    """(model, clip whose text encodes to the planted word at 'zebra', HRV of the planted heads, planted concept)."""
    names = default_concept_names()
    word_concept = torch.arange(len(names))                      # one concept word per concept
    preferred = torch.randint(len(names), (128,), generator=torch.Generator().manual_seed(3))
    unet = build_unet("sd1", "tiny", seed=5)
    embeddings = engineer_head_preferences(unet, word_concept, preferred, seed=11)
    counts = torch.zeros(len(names), 128)
    counts[preferred, torch.arange(128)] = 1
    HRV = pack.hrv.format.hrv_file.HRV
    hrv = HRV(matrix=pack.hrv.format.hrv_file.normalise_rows(counts), layout=known_layout("sd1"), concepts=list(names))
    planted = int(torch.bincount(preferred, minlength=len(names)).argmax())
    clip = tokenizer_clip("sd1")
    positions = pack.hrv.maps.encode.locate_words(clip, TEXT, WORD)[0][0].positions
    context = torch.zeros(1, 77, 768)
    context[0, list(positions)] = embeddings[planted]

    def encode(tokens):
        return [[context.clone(), {"pooled_output": None}]]
    clip.encode_from_tokens_scheduled = encode
    return tiny_sd1_model(unet=unet), clip, hrv, planted


def test_diagnosis_reads_the_planted_concept_first(pack, engineered):
    model, clip, hrv, planted = engineered
    other = (planted + 1) % len(hrv.concepts)
    picture, reading, mark = pack.nodes.map_nodes.HRVDiagnose().diagnose(
        model, clip, hrv, TEXT, WORD, hrv.concepts[other], "auto", 0.25, 1, 2, 5.0, "euler", "normal", 128, 128)
    first_line = reading.splitlines()[0]
    assert first_line.startswith(f"{WORD} is read as {hrv.concepts[planted]} ")
    assert mark == f"[{WORD}:{hrv.concepts[other]}-{hrv.concepts[planted]}]"
    assert picture.shape == (1, 128, 3 * 128 + 2 * 6, 3) and 0 <= float(picture.min()) and float(picture.max()) <= 1
    scores = [float(part.rsplit(" ", 1)[1]) for part in first_line.split(" is read as ")[1].split(", ")]
    assert len(scores) == 5 and scores[0] > 0.5 and scores[1] < scores[0] / 2     # cosine similarities, clear lead
    _, _, mark = pack.nodes.map_nodes.HRVDiagnose().diagnose(
        model, clip, hrv, TEXT, WORD, hrv.concepts[planted], "auto", 0.25, 1, 2, 5.0, "euler", "normal", 128, 128)
    assert mark == f"[{WORD}:{hrv.concepts[planted]}]"


def test_reading_equals_a_plain_cosine_of_the_head_mass(pack, engineered):
    model, clip, hrv, planted = engineered
    maps = pack.hrv.maps
    request = maps.encode.map_request(clip, hrv, TEXT, WORD, "auto", "top_k", 0.25)
    import nodes as comfy_nodes  # noqa: F401  (ComfyUI's node module loads comfy.sample's dependencies)
    out = pack.nodes.map_nodes.sample_with_maps(model, clip, TEXT, request, 1, 2, 5.0, "euler", "normal", 128, 128)
    recorded = request.holder.find(out)
    mass = recorded.head_mass()[0, :, 0].double()
    expected = [float(hrv.matrix[c].double() @ mass / (hrv.matrix[c].double().norm() * mass.norm()))
                if hrv.matrix[c].abs().sum() > 0 else 0.0 for c in range(len(hrv.concepts))]
    reading = maps.diagnose.read_word(WORD, hrv.matrix, hrv.concepts, recorded.head_mass()[0, :, 0])
    assert torch.allclose(reading.scores.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    assert reading.order[0] == planted
    # auto concept of the map node: the concept whose row weighs the word's heads most is the planted one too.
    assert recorded.word_concepts() == [planted]
    assert recorded.describe()[0].startswith(f"{WORD}: top 32 of 128 heads of {hrv.concepts[planted]} (auto concept")
