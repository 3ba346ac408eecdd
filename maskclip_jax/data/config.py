"""Defaults of the `config.input` section (no tensorflow here: config files import this)."""
import ml_collections

# The source string forms, for error messages and the docs.
SOURCE_FORMS = ("synthetic[:SPLIT]", "wds:PATTERN", "tfrecord:PATTERN", "tfds:NAME[:SPLIT]",
                "csv:PATH", "folder:PATH")
# `synthetic_kind`: which embedded set `synthetic[:SPLIT]` reads.
SYNTHETIC_KINDS = ("shapes", "scenes")
# PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): 1024 * 1024 * 1024 // 4 // 3 pixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
IMAGE_DTYPES = ("float32", "uint8")  # input.image_dtype's choices (see below)


def input_config_defaults() -> ml_collections.ConfigDict:
  """The input section: `config.input = input_config_defaults()`, then override fields.

  Data strings (`train_data`, `eval_data`) take one of these forms:
    synthetic[:SPLIT]   the embedded synthetic set (built into `tfds_data_dir` on first use, in
                        seconds); train data reads `train`, eval data reads `test`. Which set:
                        `synthetic_kind` = 'shapes' (captioned_shapes: one shape an image, 36
                        colour x shape classes) or 'scenes' (captioned_scenes: 2-4 textured
                        objects, captions with relations, labels of the subject: `label` and
                        the attributes `colour`, `shape`, `size`, `position`, `texture`, any of
                        which `label_key` selects).
    wds:PATTERN         webdataset / img2dataset tar shards, e.g. `gs://b/{00000..00127}.tar`;
                        brace ranges, globs and several patterns joined by `::`.
    tfrecord:PATTERN    img2dataset TFRecord shards (same pattern syntax).
    tfds:NAME[:SPLIT]   any prepared TFDS data set, e.g. `tfds:coco_captions:train`.
    csv:PATH            open_clip's CSV/TSV: an image-path column and a caption column.
    folder:PATH         ImageNet-style class subfolders, PATH/<class>/<image>, for evaluation:
                        labels are the sorted folder names' indices, no captions, and the
                        key fields below do not apply.
  """
  c = ml_collections.ConfigDict()
  c.train_data = "synthetic"
  c.eval_data = "synthetic"
  c.image_size = 224  # also the model's (config.model.vision.image_size refers to it)
  # Examples held by the shuffle buffer (encoded, before decoding). Its contents are part of the
  # saved pipeline position, so the position costs about shuffle_buffer x the mean sample size.
  c.shuffle_buffer = 10_000
  # RandomResizedCrop, with torchvision's semantics (area fraction, log-uniform aspect ratio).
  c.crop_scale = (0.5, 1.0)
  c.crop_ratio = (3 / 4, 4 / 3)
  c.resize_method = "bicubic"  # open_clip's interpolation for train and eval
  # 'float32': CLIP-normalised images (the default). 'uint8': 0..255 pixels, for a train step
  # that normalises on the device (normalization.normalize); a third less host CPU per image.
  c.image_dtype = "float32"
  c.context_length = 77  # also the text tower's (config.model.text.context_length)

  # Where images, captions and labels live. Empty means the source's default:
  #   wds:      image_key = 'jpg,jpeg,png,webp' (member extensions, first found wins),
  #             caption_key = 'txt'
  #   tfrecord: image_key = 'jpg', caption_key = 'txt' (img2dataset's feature names)
  #   tfds:     image_key = 'image', caption_key = 'caption' ('/' reaches into nested
  #             features, e.g. 'captions/text'; a list of captions gives one at random in
  #             training and the first in evaluation)
  #   csv:      image_key = 'filepath', caption_key = 'title' (open_clip's column names)
  # Set caption_key = 'none' for eval data without captions (e.g. classification only).
  c.image_key = ""
  c.caption_key = ""
  c.label_key = ""  # eval batches carry `label` when set (synthetic: always; '' = 'label')
  c.csv_separator = "\t"
  c.csv_image_root = ""  # relative image paths are relative to this; empty: the CSV's folder
  c.tfds_data_dir = ""  # empty: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)

  # Input checks (wds: and tfrecord: patterns; images of every source).
  # Every file a pattern names outright (a plain name, or one that a brace range or list
  # expands to) must exist, or the run fails before training, naming the missing ones. True
  # marks the pattern as a superset of the shards (e.g. `{00000..01535}` after a download that
  # lost some): the existing ones are read and the number missing is logged. Globs (`*`) name
  # whatever matches either way.
  c.allow_missing_shards = False
  # Images whose header declares more pixels (height x width) than this are skipped and counted
  # as bad samples without being decoded (a decompression-bomb guard; PIL's default limit).
  # Read from the header: JPEG, PNG, GIF (its logical screen), BMP, WebP. 0: no limit.
  # (Always on: a wds: file that is empty or no tar is a bad shard, named in a warning each time
  # it is read and counted in the input iterator's bad_shard_count.)
  c.max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS

  # The embedded synthetic set: 'shapes' or 'scenes' (see above). synthetic_image_size = 0
  # draws at image_size.
  c.synthetic_kind = "shapes"
  c.synthetic_train_size = 10_000
  c.synthetic_test_size = 1_000
  c.synthetic_image_size = 0

  # Training data over several processes. False (default): each process reads its own share of
  # the data (files or examples), so nothing is read twice, and the global batch depends on the
  # process count. True: every process reads the whole stream as one process would and keeps
  # the rows its devices hold, so the global batches are the same for any process count (and a
  # saved data position resumes exactly on another process count), at P times the input work.
  c.every_process_reads_all = False

  # Throughput knobs. -1 means tf.data.AUTOTUNE.
  c.num_parallel_calls = -1
  c.cycle_length = 4  # shards read at once
  c.prefetch = 2  # host batches kept ready (they are also part of the saved position)
  return c
