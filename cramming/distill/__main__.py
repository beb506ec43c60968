"""`python -m cramming.distill ...`"""

from cramming.distill import main

main()
