set -x
common="-d fashion-mnist --split first:5000 -m deep-mlp -e 10 -b 32 --optimizer sgd --seed 42 --device cpu"
relulab train $common -a relu --init glorot_uniform --lr 0.01 --out relu_glorot.json
relulab train $common -a relu --init he_normal --lr 0.001 --out relu_he.json
relulab train $common -a sigmoid --init glorot_uniform --lr 0.001 --out sigmoid_glorot.json
relulab train $common -a tanh --init glorot_uniform --lr 0.001 --out tanh_glorot.json
