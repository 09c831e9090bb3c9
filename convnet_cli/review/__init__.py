"""`convnet review` (docs/REVIEW.md): listen to and mark a sample of detections in a local web page.

sample.py    DETECTIONS -> detections per class -> the sample (top, random, stratified), review.csv
media.py     per item: a WAV clip at the recording's rate, a listening copy, a spectrogram PNG
verdicts.py  verdicts.csv and verdicts.selections.txt, written atomically under a lock
build.py     REVIEW_DIR from DETECTIONS (or the sample already there): the steps above, in order
page.py      the page (one HTML file, inline CSS and JS) for the server and for --no-serve's index.html
server.py    the page on 127.0.0.1, saving each verdict as it comes
evaluate.py  reviewed precision per class (and per score bin) with its Wilson interval
"""
