"""Small-scale studies that show the methods work, on a laptop CPU: `megamid study extension|anneal OUT`.

megamid.study.extension  one base trained at L until it retrieves; none / PI / NTK / dynamic NTK / YaRN /
                         ABF / LongRoPE at 2L and 4L, zero-shot and after the same short fine-tune
megamid.study.anneal     WSD decay vs cosine at equal tokens; a curated-mix anneal vs the unfiltered mix
Both sit above megamid.recipe (they plan recipes, train and evaluate); each writes OUT/report.md.
"""
