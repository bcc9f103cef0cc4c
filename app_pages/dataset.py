"""Dataset: what a training folder holds, before anyone trains on it.

Class balance per split, regions and hardware, image sizes, a thumbnail grid
with the fracture boxes drawn, and two checks that catch silent problems:
files that cannot be decoded, and copies of one image in two splits.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_pages import _common as common
from fracture.config import Settings
from fracture.data.phantoms import REGION as PHANTOM_REGION
from fracture.data.records import DatasetLayoutError, region_words
from fracture.data.splits import find_duplicates
from fracture.io.images import InvalidImageError
from fracture.views import browse, figures, results

ROOT_KEY = "dataset_root"
PENDING_ROOT_KEY = "dataset_root_next"
PER_PAGE = 12
SIZE_SAMPLE = 300
THUMBNAIL_SIDE = 256
THUMBNAIL_WIDTH = 150  # px on the page: six per row at 1400 px, two at 390 px
PHANTOM_COUNT = 120  # enough for a demo training run that finishes in minutes on a CPU
# The classes of the multi-class demo set: four fracture types and normal.
PHANTOM_TYPES = ("transverse", "oblique", "comminuted", "displaced", "normal")
PHANTOM_SIDE = 256


list_dataset = common.list_dataset  # shared with Learn: one cache, cleared here on new data


@st.cache_data(show_spinner="Reading image sizes…", max_entries=8)
def sample_sizes(root: str) -> tuple:
    """Sizes of a seeded sample of the dataset's files (headers only), and unreadable ones."""
    paths = [record.path for record in list_dataset(root).records]
    return browse.image_sizes(paths, limit=SIZE_SAMPLE)


@st.cache_data(show_spinner=False, max_entries=256)
def thumbnail_png(path: str, boxes: tuple[tuple[float, ...], ...]) -> bytes:
    """A small PNG of one image with its boxes; PNG bytes keep the cache a tenth of raw pixels."""
    return results.encode_png(browse.load_thumbnail(path, boxes, THUMBNAIL_SIDE))


@st.cache_data(show_spinner="Hashing files to find copies across splits…", max_entries=4)
def duplicates(root: str) -> list[tuple[str, str]]:
    """Pairs of identical files in different splits (hashes every same-size candidate)."""
    return [(str(a), str(b)) for a, b in find_duplicates(list_dataset(root).records)]


def use_folder(path: str) -> None:
    st.session_state[ROOT_KEY] = path


def make_phantoms(dest: Path, classes: list[str] | None = None) -> None:
    """Write the phantom demo set: fractured and normal, or ``classes`` (fracture types)."""
    from fracture.data.phantoms import synthesize_phantoms

    try:
        synthesize_phantoms(dest, PHANTOM_COUNT, size=PHANTOM_SIDE, seed=0, classes=classes)
    except (FileExistsError, OSError, ValueError) as error:
        common.flash("error", f"Could not write the phantoms: {error}")
        return
    list_dataset.clear()
    st.session_state[ROOT_KEY] = str(dest)
    common.flash("success", f"Wrote {PHANTOM_COUNT} synthetic phantom images to {dest}.")


def download_fracatlas(dest: Path) -> None:
    """Fetch and import FracAtlas with a progress bar; say plainly why when it cannot."""
    from fracture.data.download import DownloadError
    from fracture.data.download import download_fracatlas as fetch

    bar = st.progress(0.0, text="Asking figshare for FracAtlas…")

    def progress(done: int, total: int | None) -> None:
        if total:
            bar.progress(
                min(1.0, done / total),
                text=f"Downloading FracAtlas: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB",
            )
        else:
            bar.progress(0.0, text=f"Downloading FracAtlas: {done / 1e6:,.0f} MB")

    try:
        with st.spinner("Downloading, checking and importing FracAtlas…"):
            dataset = fetch(dest, progress=progress)
    except DownloadError as error:
        bar.empty()
        st.error("FracAtlas could not be downloaded:")
        st.code(str(error), language=None)
        return
    bar.empty()
    list_dataset.clear()
    common.flash("success", f"FracAtlas is ready: {len(dataset.records):,} radiographs.")
    st.session_state[PENDING_ROOT_KEY] = str(dest)
    st.rerun()


def offer_fracatlas(settings: Settings) -> None:
    """The real data, one click away: FracAtlas from its publisher."""
    dest = settings.data_dir / "fracatlas"
    st.markdown(
        "**Real radiographs:** download **FracAtlas** (4,083 musculoskeletal radiographs, 717 "
        "fractured; Abedeen et al., *Scientific Data* 2023, doi:10.1038/s41597-023-02432-4, "
        "licence CC BY 4.0) from figshare and import it. The archive is several hundred MB; an "
        "interrupted download resumes when you press the button again."
    )
    if common.path_exists(str(dest)) and any(dest.iterdir()):
        st.button(
            "Open FracAtlas", on_click=use_folder, args=(str(dest),), icon=":material/folder_open:"
        )
    elif st.button("Download FracAtlas", icon=":material/download:", type="primary"):
        download_fracatlas(dest)


def offer_phantoms(settings: Settings) -> None:
    """The way out for a fresh machine: a synthetic demo set that needs no patient data."""
    dest = settings.data_dir / "phantoms"
    st.markdown(
        "No dataset yet? Generate the **synthetic phantom demo set**: computer-drawn long "
        "bones, half with a fracture gap. They are **synthetic, not clinical data**, good for "
        "trying the pipeline end to end, never for judging a model on real radiographs."
    )
    offer_set(dest, "the phantom set", f"Generate {PHANTOM_COUNT} synthetic phantoms", None)
    offer_set(
        settings.data_dir / "phantom-types",
        "the multi-class phantom set",
        f"Generate {PHANTOM_COUNT} multi-class phantoms ({', '.join(PHANTOM_TYPES)})",
        list(PHANTOM_TYPES),
    )


def offer_set(dest: Path, what: str, generate: str, classes: list[str] | None) -> None:
    """Open a phantom set already written to ``dest``, or offer to write it."""
    if common.path_exists(str(dest)) and any(dest.iterdir()):
        st.button(
            f"Open {what} in {dest}",
            on_click=use_folder,
            args=(str(dest),),
            icon=":material/folder_open:",
        )
    else:
        st.button(
            f"{generate} in {dest}",
            on_click=make_phantoms,
            args=(dest, classes),
            icon=":material/science:",
        )


st.title("Dataset")
common.show_model_banner()
common.show_flash()
settings = common.settings()
st.session_state.setdefault(ROOT_KEY, str(settings.data_dir))
if PENDING_ROOT_KEY in st.session_state:
    # Set before the text box exists: a widget's value cannot change once it is drawn.
    st.session_state[ROOT_KEY] = st.session_state.pop(PENDING_ROOT_KEY)
root = st.text_input(
    "Dataset folder",
    key=ROOT_KEY,
    help="A folder in the folders, FracAtlas or MURA layout; see the README.",
)

try:
    dataset = list_dataset(root.strip())
except DatasetLayoutError as error:
    st.warning(f"No dataset found in `{error.folder}`: {error.reason}.")
    with st.expander("Accepted layouts"):
        st.code(str(error).split("\n", 1)[1] if "\n" in str(error) else str(error), language=None)
    offer_fracatlas(settings)
    offer_phantoms(settings)
    st.stop()
except (OSError, ValueError) as error:
    st.error(f"Could not list `{root}`: {error}")
    offer_fracatlas(settings)
    offer_phantoms(settings)
    st.stop()

frame = dataset.to_frame()
summary = dataset.summary()
is_phantom = (frame["region"] == PHANTOM_REGION).any()
if is_phantom:
    st.warning(
        "**Synthetic phantoms, not clinical data.** A model trained or evaluated on "
        "them says nothing about real radiographs.",
        icon=":material/science:",
    )
total = len(frame)
class_counts = frame["label"].value_counts()
if dataset.classes is None:
    n_fractured = int(class_counts.get(1, 0))
    composition = f"{n_fractured:,} fractured, {total - n_fractured:,} normal"
else:
    composition = f"{len(dataset.classes)} classes: " + ", ".join(
        f"{int(class_counts.get(label, 0)):,} {name}" for label, name in enumerate(dataset.classes)
    )
splits_on_disk = [name for name in summary if name not in dataset.made_splits]
st.caption(
    f"{dataset.layout.capitalize()} layout, {figures.plural(total, 'image')} "
    f"({composition}). "
    + (
        f"Split(s) as given by the folder or its manifest: {', '.join(splits_on_disk)}. "
        if splits_on_disk
        else ""
    )
    + (
        f"The {', '.join(dataset.made_splits)} split(s) were made here (seeded, stratified), "
        f"not found on disk."
        if dataset.made_splits
        else ""
    )
)

charts = st.columns(3)
with charts[0]:
    st.plotly_chart(figures.class_balance_figure(summary), key="balance")
with charts[1]:
    st.plotly_chart(figures.breakdown_figure(frame, "region", "Anatomical region"), key="regions")
with charts[2]:
    if frame["hardware"].notna().any():
        hardware = frame.assign(
            hardware=frame["hardware"].map({True: "implant visible", False: "no implant"})
        )
        st.plotly_chart(
            figures.breakdown_figure(hardware, "hardware", "Orthopaedic hardware"), key="hardware"
        )
    else:
        st.info("No hardware (implant) annotations in this dataset.")

sizes_column, checks_column = st.columns([3, 2])
with sizes_column:
    sizes, size_problems = sample_sizes(root.strip())
    if len(sizes):
        st.plotly_chart(figures.size_figure(sizes), key="sizes")
        longest = sizes[["width", "height"]].max(axis=1)
        st.caption(
            f"Longer side: min {longest.min()} px, median {int(longest.median())} px, "
            f"max {longest.max()} px. The model letterboxes every image to its input "
            f"size, so small images are enlarged and fine detail in large ones is lost."
        )
    if size_problems:
        st.warning(
            f"{len(size_problems)} file(s) have unreadable headers:\n\n"
            + "\n".join(f"- `{p}`" for p in size_problems[:10])
        )
with checks_column:
    st.subheader("Copies across splits")
    st.caption(
        "A copy of a training image in validation inflates every validation score. "
        "The check hashes files, which takes a while on thousands of images."
    )
    checked = st.session_state.setdefault("duplicates_checked", set())
    if st.button("Check for duplicates", icon=":material/content_copy:"):
        checked.add(str(dataset.root))
    if str(dataset.root) in checked:
        pairs = duplicates(root.strip())
        if pairs:
            st.warning(f"{len(pairs)} pair(s) of identical files sit in different splits.")
            st.dataframe([{"first": a, "second": b} for a, b in pairs], hide_index=True)
        else:
            st.success("No identical files across splits.")

st.subheader("Images")
filters = st.columns(3)
split = filters[0].selectbox("Split", ["all", *summary], key="filter_split")
class_names = ["fractured", "normal"] if dataset.classes is None else dataset.classes
label_name = filters[1].selectbox("Class", ["all", *class_names], key="filter_class")
regions = sorted(frame["region"].fillna("unknown").unique().tolist())
region = filters[2].selectbox(
    "Region", ["all", *regions], key="filter_region", format_func=region_words
)
shown = browse.filter_frame(
    frame,
    split=None if split == "all" else split,
    label_name=None if label_name == "all" else label_name,
    region=None if region == "all" else region,
)
pages = browse.page_count(len(shown), PER_PAGE)
boxes = {str(record.path): record.boxes for record in dataset.records if record.boxes}
# The key names the filters, so a new filter starts again at page 1.
page = st.pagination(pages, key=f"thumb_page|{split}|{label_name}|{region}|{pages}")
st.caption(
    f"{figures.plural(len(shown), 'image')}; fracture boxes in red where the dataset has them."
)
unreadable = []
on_page = shown.iloc[browse.page_slice(len(shown), page, PER_PAGE)]
# A wrapping row of fixed-width cells, not columns: a phone would stack columns one
# image per row; this keeps two per row at 390 px and fills a wide screen.
grid = st.container(horizontal=True, gap="small")
for row in on_page.itertuples():
    cell = grid.container(width=THUMBNAIL_WIDTH)
    try:
        png = thumbnail_png(row.path, boxes.get(row.path, ()))
    except InvalidImageError as error:
        unreadable.append(str(error))
        cell.error(f"{row.rel_path}: unreadable")
        continue
    cell.image(
        png, caption=f"{Path(row.rel_path).name} · {row.split} · {row.label_name}", width="stretch"
    )
if unreadable:
    st.warning(
        "Unreadable files (training skips them):\n\n"
        + "\n".join(f"- {message}" for message in unreadable)
    )
