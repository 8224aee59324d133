# FAKE env.sh
